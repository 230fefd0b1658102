//! The one boundary every size passes before it becomes an allocation.
//!
//! Sizes reach clo from a model's `config.json`, a GGUF file's metadata, run settings (the
//! command line, `config.toml`, the server's API, the web form) and requests. Each is checked
//! here, with the same rules whatever its source:
//! - **bounds** ([`Bound`]): positive where it must be, and no larger than the largest real model
//!   or setting clo knows of, with room to spare (so arithmetic on the checked values cannot
//!   overflow, even on 32-bit wasm where it is done in `u64`);
//! - **shape rules** ([`check_decoder`]): heads divide into key/value heads, an even head size;
//! - **memory** ([`check_fits`]): the bytes a model or a training step implies (the memory
//!   model of `clo bench`, [`crate::bench::train_memory`]) against the memory this process can
//!   have ([`memory_limit`]), before anything is allocated.
//!
//! Too large is a [`CoreError::OutOfBounds`] or [`CoreError::TooLarge`] (exit 1 at the command
//! line, HTTP 400 from the server), naming the field, the value, the estimate and the limit.

use std::fmt::Display;

use crate::error::{CoreError, Result};
use crate::load::models::DecoderConfig;

/// An inclusive range a size must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The name of the size where it is read (`num_hidden_layers`, `lora_rank`).
    pub field: &'static str,
    pub min: u64,
    pub max: u64,
    /// What the largest value stands for, for the error (`"Llama 3.1 405B has 126"`).
    pub why: &'static str,
}

impl Bound {
    /// `value` when it lies in the bound; else an error naming `origin` (a file, a request, a
    /// setting) and the field.
    pub fn check<T: Copy + TryInto<u64> + Display>(
        &self,
        origin: impl Display,
        value: T,
    ) -> Result<T> {
        self.check_as(self.field, origin, value)
    }

    /// [`Self::check`] with the field named as its source spells it (a GGUF key, a flag).
    pub fn check_as<T: Copy + TryInto<u64> + Display>(
        &self,
        field: &str,
        origin: impl Display,
        value: T,
    ) -> Result<T> {
        let v: Option<u64> = value.try_into().ok();
        match v {
            Some(v) if (self.min..=self.max).contains(&v) => Ok(value),
            _ => Err(CoreError::OutOfBounds {
                origin: origin.to_string(),
                field: field.to_string(),
                value: value.to_string(),
                why: if v.is_some_and(|v| v < self.min) {
                    format!("is below the minimum of {}", self.min)
                } else {
                    format!("is above clo's limit of {} ({})", self.max, self.why)
                },
                hint: if v.is_some_and(|v| v < self.min) {
                    format!("give {} a value of at least {}", field, self.min)
                } else {
                    format!(
                        "give {field} a value from {} to {} (a model file that says more is damaged or not a model clo can run)",
                        self.min, self.max
                    )
                },
            }),
        }
    }
}

// Model shapes. The largest published decoder models (Llama 3.1 405B: 126 layers, hidden 16384,
// MLP 53248, 128 heads; Gemma 3: vocabulary 262144; Llama 4: 10M positions) fit with room.
pub const VOCAB: Bound = Bound {
    field: "vocab_size",
    min: 1,
    max: 1 << 22,
    why: "Gemma 3 has 262144 tokens",
};
pub const HIDDEN: Bound = Bound {
    field: "hidden_size",
    min: 1,
    max: 1 << 16,
    why: "Llama 3.1 405B has 16384",
};
pub const INTERMEDIATE: Bound = Bound {
    field: "intermediate_size",
    min: 1,
    max: 1 << 18,
    why: "Llama 3.1 405B has 53248",
};
pub const LAYERS: Bound = Bound {
    field: "num_hidden_layers",
    min: 1,
    max: 1024,
    why: "Llama 3.1 405B has 126",
};
pub const HEADS: Bound = Bound {
    field: "num_attention_heads",
    min: 1,
    max: 1024,
    why: "Llama 3.1 405B has 128",
};
pub const KV_HEADS: Bound = Bound {
    field: "num_key_value_heads",
    min: 1,
    max: 1024,
    why: "at most num_attention_heads",
};
pub const HEAD_DIM: Bound = Bound {
    field: "head_dim",
    min: 2,
    max: 1024,
    why: "Gemma 2 uses 256",
};
pub const POSITIONS: Bound = Bound {
    field: "max_position_embeddings",
    min: 1,
    max: 1 << 25,
    why: "Llama 4 Scout has 10M",
};
pub const WINDOW: Bound = Bound {
    field: "sliding_window",
    min: 1,
    max: 1 << 25,
    why: "a window of at most max_position_embeddings",
};

// Run settings (the command line, config.toml, the API and the web form).
pub const LORA_RANK: Bound = Bound {
    field: "lora_rank",
    min: 1,
    max: 4096,
    why: "LoRA ranks are 4 to 256; a rank is also at most the smallest dimension it adapts",
};
pub const BATCH_SIZE: Bound = Bound {
    field: "batch_size",
    min: 1,
    max: 4096,
    why: "examples per micro-batch; use grad_accum for larger effective batches",
};
pub const GRAD_ACCUM: Bound = Bound {
    field: "grad_accum",
    min: 1,
    max: 4096,
    why: "micro-batches per optimizer step",
};
pub const MAX_LEN: Bound = Bound {
    field: "max_len",
    min: 2,
    max: 1 << 20,
    why: "tokens per training sequence",
};
pub const STEPS: Bound = Bound {
    field: "steps",
    min: 1,
    max: 100_000_000,
    why: "optimizer steps per stage",
};
pub const EPOCHS: Bound = Bound {
    field: "epochs",
    min: 1,
    max: 100_000,
    why: "passes over the data",
};
// Inference.
pub const NEW_TOKENS: Bound = Bound {
    field: "max_new_tokens",
    min: 1,
    max: 1 << 20,
    why: "tokens generated per answer; the model's context caps it further",
};
pub const SCORE_BATCH: Bound = Bound {
    field: "batch_size",
    min: 1,
    max: 4096,
    why: "sequences per forward pass",
};

/// Checks a decoder's shape: every size in its bound, key/value heads dividing the heads, an
/// even head size, windows within the context. `origin` names the config (a file) in errors.
pub fn check_decoder(c: &DecoderConfig, origin: impl Display) -> Result<()> {
    let origin = origin.to_string();
    VOCAB.check(&origin, c.vocab_size)?;
    HIDDEN.check(&origin, c.hidden_size)?;
    INTERMEDIATE.check(&origin, c.intermediate_size)?;
    LAYERS.check(&origin, c.num_layers)?;
    HEADS.check(&origin, c.num_heads)?;
    KV_HEADS.check(&origin, c.num_kv_heads)?;
    HEAD_DIM.check(&origin, c.head_dim)?;
    POSITIONS.check(&origin, c.max_position_embeddings)?;
    let shape = |field: &str, value: String, why: &str| {
        Err(CoreError::OutOfBounds {
            origin: origin.clone(),
            field: field.into(),
            value,
            why: why.into(),
            hint: "check config.json (or the GGUF metadata): it does not describe a working model"
                .into(),
        })
    };
    if !c.num_heads.is_multiple_of(c.num_kv_heads) {
        return shape(
            "num_key_value_heads",
            c.num_kv_heads.to_string(),
            &format!("does not divide num_attention_heads = {}", c.num_heads),
        );
    }
    if !c.head_dim.is_multiple_of(2) {
        return shape(
            "head_dim",
            c.head_dim.to_string(),
            "is odd (rotary embeddings pair the dimensions of a head)",
        );
    }
    if c.sliding_windows.len() != c.num_layers {
        return shape(
            "sliding_window",
            format!("{} layer windows", c.sliding_windows.len()),
            &format!("do not match num_hidden_layers = {}", c.num_layers),
        );
    }
    for w in c.sliding_windows.iter().flatten() {
        WINDOW.check(&origin, *w)?;
    }
    let finite_positive = |field: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            shape(field, v.to_string(), "must be a finite positive number")
        }
    };
    finite_positive("rms_norm_eps", c.rms_norm_eps)?;
    finite_positive("rope_theta", c.rope.theta)?;
    let o = &c.options;
    for (field, v) in [
        ("embed_scale", o.embed_scale),
        ("query_pre_attn_scalar", o.query_pre_attn_scalar),
        ("attn_logit_softcapping", o.attn_logit_softcap),
        ("final_logit_softcapping", o.final_logit_softcap),
        ("rope_local_base_freq", o.local_rope_theta),
    ] {
        if let Some(v) = v {
            finite_positive(field, v)?;
        }
    }
    Ok(())
}

/// How much memory this process may use, and what sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// `physical memory`, `the cgroup's memory.max`, `the address-space limit (ulimit -v)` or
    /// `CLO_MEMORY_LIMIT`.
    pub source: String,
}

static LIMIT_OVERRIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets this process's memory limit to `bytes` whatever the machine and the environment say
/// (0: back to them). For programs that embed clo and for tests, which cannot safely change the
/// environment of a running process.
pub fn set_memory_limit(bytes: u64) {
    LIMIT_OVERRIDE.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The environment variable that sets the memory limit (`64GiB`, `8000000000`) or turns the
/// check off (`off`).
pub const MEMORY_LIMIT_ENV: &str = "CLO_MEMORY_LIMIT";

/// The memory this process may use: `CLO_MEMORY_LIMIT` when set, else the smallest of the
/// machine's physical memory, the cgroup's `memory.max` and what remains of the address-space
/// limit (`ulimit -v`, `prlimit --as`). `None` where none is known (off Linux, in a browser) or
/// the check is turned off.
pub fn memory_limit() -> Option<MemoryLimit> {
    let set = LIMIT_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed);
    if set > 0 {
        return Some(MemoryLimit {
            bytes: set,
            source: "the limit this program set".into(),
        });
    }
    if let Ok(text) = std::env::var(MEMORY_LIMIT_ENV) {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return None;
        }
        if let Some(bytes) = parse_bytes(text) {
            return Some(MemoryLimit {
                bytes,
                source: MEMORY_LIMIT_ENV.into(),
            });
        }
        tracing::warn!(
            value = text,
            "{MEMORY_LIMIT_ENV} is not a size such as 16GiB; ignored"
        );
    }
    system_limit()
}

#[cfg(target_os = "linux")]
fn system_limit() -> Option<MemoryLimit> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let field = |text: &str, key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut limits = Vec::new();
    if let Some(kb) = read("/proc/meminfo").and_then(|t| field(&t, "MemTotal:")) {
        limits.push((kb * 1024, "physical memory".to_string()));
    }
    if let Some(max) = read("/sys/fs/cgroup/memory.max").and_then(|t| t.trim().parse().ok()) {
        limits.push((max, "the cgroup's memory.max".to_string()));
    }
    // `Max address space  <soft>  <hard>  bytes`: what is left of it is what can be mapped.
    if let Some(soft) = read("/proc/self/limits").and_then(|t| field(&t, "Max address space")) {
        let used = read("/proc/self/status")
            .and_then(|t| field(&t, "VmSize:"))
            .unwrap_or(0)
            * 1024;
        limits.push((
            soft.saturating_sub(used),
            "the address space left under ulimit -v".to_string(),
        ));
    }
    limits
        .into_iter()
        .min_by_key(|(b, _)| *b)
        .map(|(bytes, source)| MemoryLimit { bytes, source })
}

#[cfg(not(target_os = "linux"))]
fn system_limit() -> Option<MemoryLimit> {
    None
}

/// A size such as `16GiB`, `512MiB`, `8G`, `2000000000`.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = num * scale as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

pub use crate::error::human_bytes;

/// Refuses work whose memory `estimate` (bytes) exceeds [`memory_limit`]; `what` names the
/// work and `hint` the way to make it smaller.
pub fn check_fits(what: &str, estimate: f64, hint: &str) -> Result<()> {
    check_fits_in(memory_limit(), what, estimate, hint)
}

/// [`check_fits`] against a given limit (`None`: no limit known).
pub fn check_fits_in(
    limit: Option<MemoryLimit>,
    what: &str,
    estimate: f64,
    hint: &str,
) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    if estimate.is_finite() && estimate <= limit.bytes as f64 {
        return Ok(());
    }
    Err(CoreError::TooLarge {
        what: what.to_string(),
        estimate: if estimate.is_finite() && estimate < u64::MAX as f64 {
            estimate as u64
        } else {
            u64::MAX
        },
        limit: limit.bytes,
        limit_source: limit.source,
        hint: format!(
            "{hint}; {MEMORY_LIMIT_ENV}=off skips this check, {MEMORY_LIMIT_ENV}=SIZE sets the limit"
        ),
    })
}

/// Bytes of a model's weights as clo holds them when it loads it (f32).
pub fn weight_bytes(c: &DecoderConfig) -> f64 {
    c.parameter_count() as f64 * 4.0
}

/// Refuses to load a model whose weights alone do not fit in memory.
pub fn check_model_fits(c: &DecoderConfig, origin: impl Display) -> Result<()> {
    check_fits(
        &format!(
            "loading {origin} ({:.2}B parameters, f32)",
            c.parameter_count() as f64 / 1e9
        ),
        weight_bytes(c),
        "use a smaller model, or a machine with more memory",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_field_value_and_limit() {
        assert_eq!(LAYERS.check("m/config.json", 32usize).unwrap(), 32);
        let err = LAYERS
            .check("m/config.json", 1_000_000usize)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m/config.json")
                && err.contains("`num_hidden_layers` = 1000000")
                && err.contains("1024"),
            "{err}"
        );
        let err = HEADS.check("x", 0usize).unwrap_err().to_string();
        assert!(err.contains("below the minimum of 1"), "{err}");
        // A value that does not fit u64 (a negative i64) is out of bounds, not a panic.
        assert!(LAYERS.check("x", -1i64).is_err());
        assert_eq!(
            LAYERS.check("x", 0i64).unwrap_err().kind(),
            crate::error::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn memory_estimates_are_checked_against_the_limit() {
        let limit = || {
            Some(MemoryLimit {
                bytes: 1 << 30,
                source: "test".into(),
            })
        };
        assert!(check_fits_in(limit(), "w", 1e9, "h").is_ok());
        let err = check_fits_in(limit(), "loading m", 5e11, "use less")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("loading m")
                && err.contains("465.66 GiB")
                && err.contains("1.00 GiB")
                && err.contains("use less"),
            "{err}"
        );
        assert!(check_fits_in(limit(), "w", f64::INFINITY, "h").is_err());
        assert!(check_fits_in(None, "w", 1e30, "h").is_ok());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("16GiB"), Some(16 << 30));
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_reports_a_limit() {
        let limit = system_limit().expect("/proc/meminfo");
        assert!(limit.bytes > 64 << 20, "{limit:?}");
    }
}
