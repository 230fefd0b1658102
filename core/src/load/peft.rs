//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), read onto a base
//! model and written from one: what `clo export --peft` writes, what the browser's
//! `clo.exportAdapter()` downloads, and what peft's `save_pretrained` writes.
//!
//! Burn's adapter of a weight `W` (stored `[in, out]`) is `scale * a @ b` with `a: [in, r]`,
//! `b: [r, out]`; PEFT's is `scale * B @ A` on `[out, in]` with `lora_A.weight: [r, in]` and
//! `lora_B.weight: [out, r]`, so `lora_A.weight = aᵀ` and `lora_B.weight = bᵀ`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use serde_json::{Value, json};

use crate::error::{CoreError, Result};
use crate::load::gguf::HfTensors;
use crate::load::models::CausalLm;
use crate::load::trainable::{LORA_TARGETS, Trainable};

/// The config file of a PEFT adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The weights file of a PEFT adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Whether `dir` is a PEFT adapter directory (an adapter config and no model config).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file() && !dir.join("config.json").is_file()
}

/// What an `adapter_config.json` says, in the terms clo's LoRA takes.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// `base_model_name_or_path`.
    pub base: String,
    pub rank: usize,
    /// `lora_alpha`; with `use_rslora` the scale is `alpha / sqrt(rank)`, not `alpha / rank`.
    pub alpha: f64,
    pub rslora: bool,
    pub targets: Vec<String>,
}

impl AdapterConfig {
    /// Parses `text`, the file at `path` (named in errors). LoRA on whole projection modules
    /// only: anything peft can configure that clo's LoRA cannot express is refused by its key.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| CoreError::json(path, &e, "adapter_config.json must be a JSON object"))?;
        let bad = |key: &str, why: String| {
            CoreError::Invalid(format!(
                "{}: `{key}` {why}\nHINT: clo reads PEFT LoRA adapters of the q/k/v/o and MLP projections (what `clo export --peft` and peft's LoraConfig(target_modules=[...]) write)",
                path.display()
            ))
        };
        match value.get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => return Err(bad("peft_type", format!("is {other:?}, not \"LORA\""))),
        }
        let rank = value
            .get("r")
            .and_then(Value::as_u64)
            .filter(|r| *r > 0)
            .ok_or_else(|| bad("r", "must be a positive integer".into()))?;
        let rank = crate::limits::LORA_RANK.check_as("r", path.display(), rank)? as usize;
        let alpha = value
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("lora_alpha", "must be a number".into()))?;
        let targets: Vec<String> = match value.get("target_modules") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(String::from)
                        .ok_or_else(|| bad("target_modules", "must hold module names".into()))
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(bad(
                    "target_modules",
                    format!("is {other:?}: give a list of module names (a regex is not read)"),
                ));
            }
        };
        let mut targets = targets;
        targets.sort_by_key(|t| {
            LORA_TARGETS
                .iter()
                .position(|k| k == t)
                .unwrap_or(usize::MAX)
        });
        if let Some(t) = targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
            return Err(bad(
                "target_modules",
                format!("names `{t}`; clo's LoRA adapts {}", LORA_TARGETS.join(", ")),
            ));
        }
        let flag = |key: &str| value.get(key).and_then(Value::as_bool).unwrap_or(false);
        if flag("fan_in_fan_out") {
            return Err(bad("fan_in_fan_out", "is true (Conv1D layouts)".into()));
        }
        match value.get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(b) => return Err(bad("bias", format!("is \"{b}\", not \"none\""))),
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if value
                .get(key)
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(key, "sets per-module ranks or alphas".into()));
            }
        }
        for key in [
            "layers_to_transform",
            "modules_to_save",
            "layer_replication",
            "target_parameters",
            "trainable_token_indices",
        ] {
            if value.get(key).is_some_and(|v| !v.is_null()) {
                return Err(bad(key, "is set".into()));
            }
        }
        for (key, what) in [("use_dora", "DoRA"), ("lora_bias", "LoRA biases")] {
            if flag(key) {
                return Err(bad(key, format!("is true ({what})")));
            }
        }
        Ok(Self {
            base: value
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            rank,
            alpha,
            rslora: flag("use_rslora"),
            targets,
        })
    }

    /// The adapters to add to a base model: Burn's LoRA scales by `alpha / rank`, so rsLoRA's
    /// `alpha / sqrt(rank)` is `alpha * sqrt(rank) / rank`.
    pub fn trainable(&self) -> Trainable {
        let alpha = if self.rslora {
            self.alpha * (self.rank as f64).sqrt()
        } else {
            self.alpha
        };
        Trainable::Lora {
            rank: self.rank,
            alpha,
            targets: self.targets.clone(),
        }
    }

    /// The `adapter_config.json` of an adapter (what peft's `LoraConfig` saves).
    pub fn to_json(&self) -> Value {
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "use_rslora": self.rslora,
            "init_lora_weights": true,
        })
    }
}

/// The base model directory an adapter names: `base_model_name_or_path` beside the adapter
/// (when relative), else as given.
pub fn base_dir(adapter_dir: &Path, config: &AdapterConfig) -> Result<PathBuf> {
    let base = Path::new(&config.base);
    let candidates = [adapter_dir.join(base), base.to_path_buf()];
    candidates
        .into_iter()
        .find(|p| {
            !config.base.is_empty()
                && (p.join("config.json").is_file() || (crate::load::gguf::is_gguf(p) && p.is_file()))
        })
        .ok_or_else(|| {
            CoreError::Invalid(format!(
                "{}: the adapter's base model `{}` (base_model_name_or_path) is not a model directory here\nHINT: give the base model with --model BASE --adapter {}, or set base_model_name_or_path to its directory",
                adapter_dir.join(ADAPTER_CONFIG).display(),
                config.base,
                adapter_dir.display()
            ))
        })
}

/// `adapter_model.safetensors` of LoRA factors in PEFT's names and layouts (as
/// [`crate::export::lora_tensors`] gives them: `model.layers.0.self_attn.q_proj.lora_A`).
pub fn adapter_safetensors(tensors: &HfTensors) -> Result<Vec<u8>> {
    let named = tensors.iter().map(|(name, (shape, values))| {
        (
            format!("base_model.model.{name}.weight"),
            shape.as_slice(),
            values.as_slice(),
        )
    });
    crate::load::weights::f32_safetensors(named, crate::load::weights::pt_metadata()).map_err(
        |message| CoreError::Safetensors {
            path: PathBuf::from(ADAPTER_WEIGHTS),
            message,
        },
    )
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Adds the adapter of `config` and `weights` (the bytes of `adapter_model.safetensors` at
/// `path`) to `model`: every LoRA factor of the file replaces the fresh one, and a factor that
/// matches no module, a missing one or a wrong shape is an error naming it.
pub fn apply_adapter(
    model: CausalLm,
    config: &AdapterConfig,
    weights: &[u8],
    path: &Path,
    device: &Device,
) -> Result<CausalLm> {
    let fail = |message: String| CoreError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let file = safetensors::SafeTensors::deserialize(weights).map_err(|e| fail(e.to_string()))?;
    // Burn's parameter path of each factor -> ([in, r] or [r, out], values in Burn's layout).
    let mut factors: BTreeMap<String, (String, [usize; 2], Vec<f32>)> = BTreeMap::new();
    for (name, view) in file.tensors() {
        let short = name.strip_prefix("base_model.model.").unwrap_or(&name);
        let short = short.strip_suffix(".weight").unwrap_or(short);
        let short = short.strip_suffix(".default").unwrap_or(short);
        let (module, factor) = match (short.strip_suffix(".lora_A"), short.strip_suffix(".lora_B"))
        {
            (Some(m), _) => (m, "a"),
            (_, Some(m)) => (m, "b"),
            _ => {
                return Err(fail(format!(
                    "tensor `{name}` is not a LoRA factor (lora_A or lora_B)"
                )));
            }
        };
        let shape = view.shape();
        let values = crate::load::weights::f32_values(&view).ok_or_else(|| {
            fail(format!(
                "tensor `{name}` is {:?}; LoRA factors must be F32, F16 or BF16",
                view.dtype()
            ))
        })?;
        let [rows, cols] = shape[..] else {
            return Err(fail(format!(
                "tensor `{name}` has shape {shape:?}, not 2-D"
            )));
        };
        factors.insert(
            format!("{module}.weight.lora.{factor}"),
            (name.clone(), [cols, rows], transpose(&values, rows, cols)),
        );
    }
    let model = config.trainable().apply(model)?;
    struct Load<'a> {
        path: Vec<String>,
        factors: &'a mut BTreeMap<String, (String, [usize; 2], Vec<f32>)>,
        device: &'a Device,
        missing: Vec<String>,
        wrong: Vec<String>,
    }
    impl ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let path = self.path.join(".");
            if !(path.ends_with(".lora.a") || path.ends_with(".lora.b")) {
                return param;
            }
            let Some((name, shape, values)) = self.factors.remove(&path) else {
                self.missing.push(path);
                return param;
            };
            let want = param.val().dims();
            if D != 2 || want[..] != shape[..] {
                self.wrong.push(format!(
                    "`{name}` gives {:?} for a factor of {want:?}",
                    [shape[1], shape[0]]
                ));
                return param;
            }
            let device = self.device.clone();
            param.map(move |_| {
                Tensor::<1>::from_data(TensorData::new(values, [shape[0] * shape[1]]), &device)
                    .reshape(want)
            })
        }
    }
    let mut load = Load {
        path: Vec::new(),
        factors: &mut factors,
        device,
        missing: Vec::new(),
        wrong: Vec::new(),
    };
    let model = model.map(&mut load);
    let (missing, wrong) = (load.missing, load.wrong);
    if let Some(w) = wrong.first() {
        return Err(fail(format!(
            "{w} (rank {} and the base model's shapes)",
            config.rank
        )));
    }
    if let Some((_, (name, _, _))) = factors.iter().next() {
        return Err(fail(format!(
            "tensor `{name}` adapts no module of this model (targets {})",
            config.targets.join(", ")
        )));
    }
    if let Some(m) = missing.first() {
        return Err(fail(format!(
            "the adapter has no factor for `{m}` ({} in all), though target_modules names its module",
            missing.len()
        )));
    }
    Ok(model)
}
