//! The resolved configuration of a training run (`RUN/config.toml`): method.md section 6's
//! defaults, overridden by a `--config` file, overridden by command-line flags.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::loss::NllReduction;
use super::trainable::Trainable;
use crate::error::{CoreError, Result};

mod settings;
pub use settings::{
    ATTENTION_KINDS, DTYPES, Form, Kind, NLL_REDUCTIONS, SETTINGS, Section, Setting, SettingInfo,
    default_value, parse_as, schema, setting, setting_default, setting_help,
    setting_help_with_default, value_text,
};

/// The training objective (method.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Method {
    /// Cross-Lingual Optimization: `lambda * NLL(y_tgt|x_tgt) + (1 - lambda) * L_CL`.
    #[default]
    #[serde(rename = "clo")]
    Clo,
    /// NLL on the English and the target pairs.
    #[serde(rename = "sft")]
    Sft,
    /// NLL on the English pairs only.
    #[serde(rename = "sft-eng")]
    SftEng,
    /// NLL on the target pairs only.
    #[serde(rename = "sft-tgt")]
    SftTgt,
    /// Sigmoid DPO on the 2N independent preference pairs.
    #[serde(rename = "dpo")]
    Dpo,
    /// `sft` to the end, then `dpo` from that model (whose reference is the SFT model).
    #[serde(rename = "sft+dpo")]
    SftDpo,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Clo,
        Method::Sft,
        Method::SftEng,
        Method::SftTgt,
        Method::Dpo,
        Method::SftDpo,
    ];
    pub const NAMES: [&str; 6] = ["clo", "sft", "sft-eng", "sft-tgt", "dpo", "sft+dpo"];

    pub fn name(self) -> &'static str {
        match self {
            Method::Clo => "clo",
            Method::Sft => "sft",
            Method::SftEng => "sft-eng",
            Method::SftTgt => "sft-tgt",
            Method::Dpo => "dpo",
            Method::SftDpo => "sft+dpo",
        }
    }

    /// The single-objective stages this method runs, in order.
    pub fn stages(self) -> Vec<Method> {
        match self {
            Method::SftDpo => vec![Method::Sft, Method::Dpo],
            m => vec![m],
        }
    }

    /// Whether the objective compares against a frozen reference model.
    pub fn needs_reference(self) -> bool {
        matches!(self, Method::Clo | Method::Dpo)
    }
}

impl std::str::FromStr for Method {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        Method::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Method::ALL[i])
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "unknown method `{s}`; choose one of {}",
                    Method::NAMES.join(", ")
                ))
            })
    }
}

// The trainable set's name lives with the trainable-weights table (`load::trainable`).
pub use crate::load::trainable::TrainableKind;

/// Everything that determines a run. Saved as `RUN/config.toml` and in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Hugging Face model directory to start from.
    pub model: PathBuf,
    /// Quadruple JSONL.
    pub data: PathBuf,
    pub method: Method,
    pub trainable: TrainableKind,
    /// With `attention`: train only layers `[from, to)`.
    pub layers: Option<[usize; 2]>,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_targets: Vec<String>,
    /// Optimizer steps per stage; when unset, `epochs` passes over the training split.
    pub steps: Option<usize>,
    pub epochs: usize,
    /// Examples per micro-batch: quadruples (clo), preference pairs (dpo) or supervised pairs
    /// (sft variants).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    /// Linear warmup: a fraction of the steps when below 1, else a number of steps.
    pub warmup: f64,
    pub beta: f64,
    pub lambda: f64,
    pub nll_reduction: NllReduction,
    pub max_len: usize,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub shuffle: bool,
    /// Share of quadruples held out for validation (at least 1 record when above 0).
    pub val_fraction: f64,
    /// Validate (and keep the best checkpoint) every K optimizer steps; default: 10 times a stage.
    pub eval_every: Option<usize>,
    /// Write a resumable checkpoint every K optimizer steps; default: `eval_every`.
    pub save_every: Option<usize>,
    /// Per-layer activation checkpointing: only each decoder layer's input is kept in the forward
    /// pass, and each layer is recomputed from it in the backward pass. Same losses and
    /// gradients.
    pub grad_checkpoint: bool,
    /// Log-probs computed this many positions at a time in training (0: the whole sequence):
    /// the `[rows, seq, vocab]` logits are never kept for the backward pass. Same losses and
    /// gradients.
    pub logp_chunk: usize,
    /// How attention is computed in training: `memory-efficient` (the default: no score matrix
    /// kept for the backward pass) or `materialized`. Same losses and gradients.
    pub attention: crate::load::models::AttentionKind,
    /// How the frozen weights are stored (`auto`, `f32`, `f16`, `bf16`); what trains stays f32.
    pub dtype: crate::load::models::Precision,
    /// DPO-Positive weight of the preference terms of clo and dpo (0: off, the paper's loss):
    /// the margin is also penalised where the chosen response falls below the reference.
    pub dpop: f64,
}

impl Default for RunConfig {
    /// The paper's appendix B (method.md section 6).
    fn default() -> Self {
        RunConfig {
            model: PathBuf::new(),
            data: PathBuf::new(),
            method: Method::Clo,
            trainable: TrainableKind::Attention,
            layers: None,
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
            steps: None,
            epochs: 1,
            batch_size: 8,
            grad_accum: 1,
            lr: 5e-5,
            min_lr: 1.1e-6,
            warmup: 0.03,
            beta: 0.1,
            lambda: 0.5,
            nll_reduction: NllReduction::TokenMean,
            max_len: 3000,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 42,
            shuffle: true,
            val_fraction: 0.05,
            eval_every: None,
            save_every: None,
            grad_checkpoint: false,
            logp_chunk: 0,
            attention: crate::load::models::AttentionKind::MemoryEfficient,
            dtype: crate::load::models::Precision::F32,
            dpop: 0.0,
        }
    }
}

impl RunConfig {
    /// The autodiff device a run trains on. (`grad_checkpoint` is the trainer's per-layer
    /// checkpointing, not Burn's per-operation strategy.)
    pub fn autodiff_device(&self, device: &Device) -> Device {
        device.clone().autodiff()
    }
}

impl RunConfig {
    /// Reads a `run.toml`; unknown keys are errors (a typo must not silently fall back).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(path, "run config")?;
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| 1 + text[..s.start].matches('\n').count())
                .unwrap_or(1);
            CoreError::Input {
                path: path.to_path_buf(),
                line,
                message: e.message().to_string(),
                hint: "run.toml takes the keys of RUN/config.toml",
            }
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run config serializes")
    }

    /// The trainable set this config asks for.
    pub fn trainable_set(&self) -> Trainable {
        match self.trainable {
            TrainableKind::Attention => Trainable::Attention {
                layers: self.layers,
            },
            TrainableKind::Lora => Trainable::Lora {
                rank: self.lora_rank,
                alpha: self.lora_alpha,
                targets: self.lora_targets.clone(),
            },
            TrainableKind::Full => Trainable::Full,
        }
    }

    /// `model` (under autodiff on `device`) as this run trains it: the trainable set applied,
    /// and what does not train stored in `dtype`.
    pub fn trainable_model(
        &self,
        model: crate::load::models::CausalLm,
        device: &Device,
    ) -> Result<crate::load::models::CausalLm> {
        let dtype = self.dtype.resolve(device)?;
        Ok(self
            .trainable_set()
            .apply(model)?
            .store_frozen_in(dtype)
            .with_attention(self.attention))
    }

    /// Refuses values that cannot train, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(CoreError::Invalid(format!("{key}: {why}")));
        if self.model.as_os_str().is_empty() {
            return bad("model", "no model directory given (the `model` setting)");
        }
        if self.data.as_os_str().is_empty() {
            return bad("data", "no quadruple file given (the `data` setting)");
        }
        // Sizes that become allocations or loop counts, in the bounds of crate::limits: the same
        // rules for the command line, config.toml, the API and the web form.
        use crate::limits;
        let origin = "run setting";
        limits::BATCH_SIZE.check(origin, self.batch_size)?;
        limits::GRAD_ACCUM.check(origin, self.grad_accum)?;
        if let Some(steps) = self.steps {
            limits::STEPS.check(origin, steps)?;
        } else {
            limits::EPOCHS.check(origin, self.epochs)?;
        }
        limits::MAX_LEN.check(origin, self.max_len)?;
        if self.trainable == TrainableKind::Lora {
            limits::LORA_RANK.check(origin, self.lora_rank)?;
        }
        for (key, every) in [
            ("eval_every", self.eval_every),
            ("save_every", self.save_every),
        ] {
            if let Some(every) = every {
                limits::Bound {
                    field: key,
                    ..limits::STEPS
                }
                .check(origin, every)?;
            }
        }
        if let Some([from, to]) = self.layers {
            limits::LAYERS.check_as("layers", origin, to)?;
            limits::Bound {
                min: 0,
                ..limits::LAYERS
            }
            .check_as("layers", origin, from)?;
        }
        limits::Bound {
            field: "logp_chunk",
            min: 0,
            ..limits::MAX_LEN
        }
        .check(origin, self.logp_chunk)?;
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("min_lr", "must be in [0, lr]");
        }
        if !(self.warmup >= 0.0 && self.warmup.is_finite()) {
            return bad(
                "warmup",
                "must be >= 0 (a fraction of the steps below 1, else a step count)",
            );
        }
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return bad("beta", "must be a positive number (paper: 0.1)");
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            return bad("lambda", "must be in [0, 1] (paper: 0.5)");
        }
        if !(self.dpop >= 0.0 && self.dpop.is_finite()) {
            return bad(
                "dpop",
                "must be 0 (off) or a positive number (Smaug: 5 to 500)",
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", "must be a number >= 0 (0 means none)");
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return bad("lora_alpha", "must be a positive number");
        }
        if let Some([from, to]) = self.layers
            && from >= to
        {
            return bad(
                "layers",
                &format!("[{from}, {to}): FROM must be below TO (layers FROM..TO-1 train)"),
            );
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return bad("max_grad_norm", "must be positive");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(
                "val_fraction",
                "must be in [0, 1) (0 means no validation split)",
            );
        }
        Ok(())
    }

    /// [`RunConfig::validate`], plus what needs the model's `config.json` (read, not loaded):
    /// the layer range must fit the model's layers.
    pub fn validate_for_model(&self) -> Result<()> {
        self.validate()?;
        let model = crate::load::models::ModelConfig::of_model(&self.model)?;
        let d = &model.decoder;
        let n = d.num_layers;
        if let Some([from, to]) = self.layers
            && to > n
        {
            return Err(CoreError::Invalid(format!(
                "layers: [{from}, {to}) does not fit the model's {n} layers; use 0 <= FROM < TO <= {n}"
            )));
        }
        if self.trainable == TrainableKind::Lora {
            // A rank above the smallest dimension of what it adapts adds nothing but memory.
            let smallest = d
                .hidden_size
                .min(d.num_heads * d.head_dim)
                .min(d.num_kv_heads * d.head_dim);
            crate::limits::Bound {
                max: smallest as u64,
                why: "the smallest dimension of the adapted projections of this model",
                ..crate::limits::LORA_RANK
            }
            .check("run setting", self.lora_rank)?;
        }
        // Weights, gradients and optimizer state, which no batch shape changes; a step's
        // activations are checked when the data's lengths are known ([`Self::check_step_fits`]).
        self.check_step_fits(d, 0, 0)
    }

    /// Refuses a run whose training step, by the memory model of `clo bench`
    /// ([`crate::bench::train_memory`]), needs more memory than this process may use:
    /// `rows` sequences of `seq` tokens per micro-batch (0, 0: the weights and optimizer only).
    pub fn check_step_fits(
        &self,
        model: &crate::load::models::DecoderConfig,
        rows: usize,
        seq: usize,
    ) -> Result<()> {
        let stored = match self.dtype {
            crate::load::models::Precision::F16 | crate::load::models::Precision::Bf16 => 2,
            _ => 4,
        };
        let estimate = crate::train::memory::train_memory(
            model,
            &crate::train::memory::StepShape {
                rows,
                seq,
                trainable: self.trainable,
                lora_rank: self.lora_rank,
                stored_bytes: stored,
                grad_checkpoint: self.grad_checkpoint,
                logp_chunk: self.logp_chunk,
                attention: self.attention,
            },
        );
        let (what, hint) = if rows == 0 {
            (
                format!(
                    "training {} ({} set, weights and optimizer state)",
                    self.model.display(),
                    self.trainable.name()
                ),
                "train a smaller model or fewer weights (trainable = lora, a smaller lora_rank), or store frozen weights in half precision (dtype = f16)",
            )
        } else {
            (
                format!(
                    "a training step of {rows} sequences x {seq} tokens on {}",
                    self.model.display()
                ),
                "lower batch_size or max_len, or turn on grad_checkpoint and logp_chunk (same results, less memory)",
            )
        };
        crate::limits::check_fits(&what, estimate.total, hint)
    }

    /// Warmup steps of a stage of `total` optimizer steps.
    pub fn warmup_steps(&self, total: usize) -> usize {
        if self.warmup < 1.0 {
            (self.warmup * total as f64).ceil() as usize
        } else {
            self.warmup as usize
        }
    }
}

#[cfg(test)]
mod tests;
