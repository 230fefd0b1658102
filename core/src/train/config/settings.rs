//! The run settings' one definition: each key of `RUN/config.toml` with its label, help, kind,
//! section and place in the web form. `clo train`'s flags, the API's schema (`GET
//! /api/settings`) and the web form are built from [`SETTINGS`]; defaults are
//! `RunConfig::default()`'s and checks `RunConfig::validate`'s, so adding a setting is a field,
//! its default and one row here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Method, RunConfig, TrainableKind};
use crate::error::{CoreError, Result};

/// What a setting's value is, and so how its text is read (the same on the command line and
/// in the web form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file or directory.
    Path,
    /// One of these names.
    Choice(&'static [&'static str]),
    /// A finite real number.
    Float,
    /// A whole number.
    Int,
    /// A whole number, or nothing for "unset".
    OptInt,
    /// On or off.
    Bool,
    /// Comma-separated names.
    List,
    /// `FROM,TO`, or nothing for "unset".
    Range,
}

impl Kind {
    /// The kind's name in the API's schema.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Path => "path",
            Kind::Choice(_) => "choice",
            Kind::Float => "float",
            Kind::Int => "int",
            Kind::OptInt => "optional_int",
            Kind::Bool => "bool",
            Kind::List => "list",
            Kind::Range => "range",
        }
    }
}

/// Reads a value of the kind named `kind` (a [`Kind::name`]; `choices` for a `choice`) from
/// text. The error says what the kind wants, and is the text the web form and `clo train` show
/// after the field's name.
pub fn parse_as(kind: &str, choices: &[&str], text: &str) -> std::result::Result<Value, String> {
    let text = text.trim();
    let whole = |t: &str, what: &str| {
        t.trim()
            .parse::<u64>()
            .map(Value::from)
            .map_err(|_| format!("{what}, not {text:?}"))
    };
    match kind {
        "path" if text.is_empty() => Err("give a path".into()),
        "path" => Ok(Value::String(text.into())),
        "choice" if choices.contains(&text) => Ok(Value::String(text.into())),
        "choice" => Err(format!(
            "choose one of {}, not {text:?}",
            choices.join(", ")
        )),
        "float" => match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(serde_json::json!(x)),
            Ok(_) => Err(format!("give a finite number, not {text:?}")),
            Err(_) => Err(format!("give a number, not {text:?}")),
        },
        "int" => whole(text, "give a whole number"),
        "optional_int" if text.is_empty() => Ok(Value::Null),
        "optional_int" => whole(text, "give a whole number or leave it empty"),
        "bool" => match text {
            "true" | "on" | "yes" | "1" => Ok(Value::Bool(true)),
            "false" | "off" | "no" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("give true or false, not {text:?}")),
        },
        "list" => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        )),
        "range" if text.is_empty() => Ok(Value::Null),
        "range" => {
            let parts: Vec<&str> = text.split(',').collect();
            let want = "give FROM,TO (two whole numbers) or leave it empty";
            match parts.as_slice() {
                [from, to] => Ok(Value::Array(vec![whole(from, want)?, whole(to, want)?])),
                _ => Err(format!("{want}, not {text:?}")),
            }
        }
        other => Err(format!(
            "this version of clo does not know settings of kind `{other}`"
        )),
    }
}

/// Where a setting belongs; the web form and the book group settings by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Model,
    Data,
    Method,
    Optimizer,
    Schedule,
    Memory,
}

/// Where the web form shows a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// In the form's first part.
    Basic,
    /// Under "More settings".
    Advanced,
    /// Not as a field: the form chooses it otherwise (the model and dataset lists).
    Hidden,
}

/// One run setting as every front end presents it: its key (in `RUN/config.toml`, run.toml,
/// the API's `config`, and as a flag with dashes), label, kind, section and help. Defaults are
/// not restated here: they are `RunConfig::default()`'s ([`setting_default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub section: Section,
    pub form: Form,
    pub help: &'static str,
}

/// The names `nll_reduction` takes.
pub const NLL_REDUCTIONS: [&str; 2] = ["token_mean", "sequence_mean"];
/// The names `attention` takes.
pub const ATTENTION_KINDS: [&str; 2] = ["memory-efficient", "materialized"];
/// The names `dtype` takes.
pub const DTYPES: [&str; 4] = ["f32", "f16", "bf16", "auto"];

/// Every run setting, in the order `clo train --help` and the web form show them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "model",
        label: "Model",
        kind: Kind::Path,
        section: Section::Model,
        form: Form::Hidden,
        help: "Hugging Face model directory (or GGUF file) to adapt.",
    },
    Setting {
        key: "data",
        label: "Dataset",
        kind: Kind::Path,
        section: Section::Data,
        form: Form::Hidden,
        help: "Quadruple JSONL: {\"id\", \"lang\", \"x_en\", \"y_en\", \"x_tgt\", \"y_tgt\"} per line.",
    },
    Setting {
        key: "method",
        label: "Method",
        kind: Kind::Choice(&Method::NAMES),
        section: Section::Method,
        form: Form::Basic,
        help: "clo: λ·NLL of the target response + (1−λ)·a DPO-style loss preferring the English answer to English prompts and the target answer to target prompts (the paper). sft: NLL on both languages; sft-eng / sft-tgt: on one; dpo: the preference loss alone; sft+dpo: sft, then dpo from it.",
    },
    Setting {
        key: "trainable",
        label: "Trainable weights",
        kind: Kind::Choice(&TrainableKind::NAMES),
        section: Section::Model,
        form: Form::Basic,
        help: "attention: only the q/k/v/o projections train (the paper); lora: low-rank adapters on them; full: every weight.",
    },
    Setting {
        key: "lr",
        label: "Learning rate",
        kind: Kind::Float,
        section: Section::Optimizer,
        form: Form::Basic,
        help: "Peak AdamW learning rate, reached after the warmup, then a cosine decay to min_lr.",
    },
    Setting {
        key: "beta",
        label: "β (DPO temperature)",
        kind: Kind::Float,
        section: Section::Method,
        form: Form::Basic,
        help: "How strongly the preference term holds the model near the frozen reference; larger β, smaller steps away from it.",
    },
    Setting {
        key: "lambda",
        label: "λ (NLL weight)",
        kind: Kind::Float,
        section: Section::Method,
        form: Form::Basic,
        help: "Weight of the NLL term on target responses; 1−λ weighs the preference term.",
    },
    Setting {
        key: "epochs",
        label: "Epochs",
        kind: Kind::Int,
        section: Section::Schedule,
        form: Form::Basic,
        help: "Passes over the training split, when steps is unset.",
    },
    Setting {
        key: "steps",
        label: "Steps",
        kind: Kind::OptInt,
        section: Section::Schedule,
        form: Form::Basic,
        help: "Optimizer steps per stage; unset: the epochs decide.",
    },
    Setting {
        key: "batch_size",
        label: "Batch size",
        kind: Kind::Int,
        section: Section::Data,
        form: Form::Basic,
        help: "Examples per micro-batch: quadruples (clo), preference pairs (dpo) or pairs (sft).",
    },
    Setting {
        key: "grad_accum",
        label: "Gradient accumulation",
        kind: Kind::Int,
        section: Section::Optimizer,
        form: Form::Advanced,
        help: "Micro-batches per optimizer step.",
    },
    Setting {
        key: "warmup",
        label: "Warmup",
        kind: Kind::Float,
        section: Section::Schedule,
        form: Form::Advanced,
        help: "Linear warmup: a share of the steps when below 1, else a number of steps.",
    },
    Setting {
        key: "min_lr",
        label: "Minimum learning rate",
        kind: Kind::Float,
        section: Section::Schedule,
        form: Form::Advanced,
        help: "Where the cosine decay of the learning rate ends.",
    },
    Setting {
        key: "max_len",
        label: "Max length",
        kind: Kind::Int,
        section: Section::Data,
        form: Form::Advanced,
        help: "Longest prompt + response in tokens; longer responses are cut, longer prompts dropped.",
    },
    Setting {
        key: "layers",
        label: "Layers (FROM,TO)",
        kind: Kind::Range,
        section: Section::Model,
        form: Form::Advanced,
        help: "With trainable attention: only layers FROM..TO train (4,8 trains layers 4-7).",
    },
    Setting {
        key: "lora_rank",
        label: "LoRA rank",
        kind: Kind::Int,
        section: Section::Model,
        form: Form::Advanced,
        help: "Rank of the adapters (trainable lora).",
    },
    Setting {
        key: "lora_alpha",
        label: "LoRA α",
        kind: Kind::Float,
        section: Section::Model,
        form: Form::Advanced,
        help: "Scale of the adapters: their update is multiplied by alpha / rank.",
    },
    Setting {
        key: "lora_targets",
        label: "LoRA targets",
        kind: Kind::List,
        section: Section::Model,
        form: Form::Advanced,
        help: "Modules that get adapters, comma-separated.",
    },
    Setting {
        key: "weight_decay",
        label: "Weight decay",
        kind: Kind::Float,
        section: Section::Optimizer,
        form: Form::Advanced,
        help: "AdamW's decoupled weight decay.",
    },
    Setting {
        key: "max_grad_norm",
        label: "Max gradient norm",
        kind: Kind::Float,
        section: Section::Optimizer,
        form: Form::Advanced,
        help: "Gradients are clipped to this global L2 norm.",
    },
    Setting {
        key: "nll_reduction",
        label: "NLL averaging",
        kind: Kind::Choice(&NLL_REDUCTIONS),
        section: Section::Method,
        form: Form::Advanced,
        help: "How the NLL is averaged: token_mean (over response tokens) or sequence_mean (over sequences).",
    },
    Setting {
        key: "dpop",
        label: "DPO-Positive weight (0: off)",
        kind: Kind::Float,
        section: Section::Method,
        form: Form::Advanced,
        help: "DPO-Positive (Pal et al. 2024) for clo and dpo: the preference margin also loses dpop times how far the chosen response fell below the reference, so training cannot raise the margin by making the chosen answer less likely. 0: off (the paper's loss).",
    },
    Setting {
        key: "val_fraction",
        label: "Validation share",
        kind: Kind::Float,
        section: Section::Data,
        form: Form::Advanced,
        help: "Share of the quadruples held out to validate (0: none); the best checkpoint is the one with the lowest validation loss.",
    },
    Setting {
        key: "eval_every",
        label: "Validate every",
        kind: Kind::OptInt,
        section: Section::Schedule,
        form: Form::Advanced,
        help: "Validate every K steps; unset: 10 times a stage.",
    },
    Setting {
        key: "save_every",
        label: "Checkpoint every",
        kind: Kind::OptInt,
        section: Section::Schedule,
        form: Form::Advanced,
        help: "Write a resumable checkpoint every K steps; unset: eval_every.",
    },
    Setting {
        key: "seed",
        label: "Seed",
        kind: Kind::Int,
        section: Section::Data,
        form: Form::Advanced,
        help: "Seeds the shuffling, the split and any random initialisation.",
    },
    Setting {
        key: "shuffle",
        label: "Shuffle",
        kind: Kind::Bool,
        section: Section::Data,
        form: Form::Advanced,
        help: "Shuffle the examples each epoch (else keep the file order).",
    },
    Setting {
        key: "grad_checkpoint",
        label: "Gradient checkpointing",
        kind: Kind::Bool,
        section: Section::Memory,
        form: Form::Advanced,
        help: "Per-layer activation checkpointing: keep only each decoder layer's input in the forward pass and recompute one layer at a time in the backward pass; same losses and gradients, much less memory, one more forward pass.",
    },
    Setting {
        key: "logp_chunk",
        label: "Log-prob chunk (positions, 0: off)",
        kind: Kind::Int,
        section: Section::Memory,
        form: Form::Advanced,
        help: "Compute the training log-probs this many positions at a time (0: the whole sequence), so the [rows, seq, vocab] logits are never kept for the backward pass; same losses and gradients, less memory, one more output-layer pass.",
    },
    Setting {
        key: "attention",
        label: "Attention",
        kind: Kind::Choice(&ATTENTION_KINDS),
        section: Section::Memory,
        form: Form::Advanced,
        help: "How attention is computed: memory-efficient (the default: only q, k, v, the output and one log-sum-exp per query are kept, the scores are recomputed in the backward pass; custom kernels on GPUs) or materialized (the [rows, heads, seq, seq] scores and softmax kept per layer, as transformers' eager attention); same losses and gradients.",
    },
    Setting {
        key: "dtype",
        label: "Frozen weights' precision",
        kind: Kind::Choice(&DTYPES),
        section: Section::Memory,
        form: Form::Advanced,
        help: "Storage of the weights that do not train: f32, f16 or bf16 (half the memory; their products run in that type, everything else in f32), or auto (bf16 or f16 where a GPU offers it, else f32). What trains keeps f32 weights and AdamW state.",
    },
];

/// The setting named `key`.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The help of setting `key` (empty for a key that is not a setting).
pub fn setting_help(key: &str) -> &'static str {
    setting(key).map_or("", |s| s.help)
}

/// The default of setting `key` (`RunConfig::default()`'s; `null` when unset).
pub fn default_value(key: &str) -> Value {
    serde_json::to_value(RunConfig::default())
        .ok()
        .and_then(|v| v.get(key).cloned())
        .unwrap_or(Value::Null)
}

/// A setting's value as text, as a form field or a flag holds it (`""` when unset).
pub fn value_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        v => v.to_string(),
    }
}

/// The default of setting `key` as text (`RunConfig::default()`'s; `None` when it is unset by
/// default or not a setting).
pub fn setting_default(key: &str) -> Option<String> {
    Some(value_text(&default_value(key))).filter(|t| !t.is_empty())
}

/// The help of setting `key` with its default, as `clo train --help` shows it.
pub fn setting_help_with_default(key: &str) -> String {
    match setting_default(key) {
        Some(d) => format!("{} [default: {d}]", setting_help(key)),
        None => setting_help(key).to_string(),
    }
}

impl Setting {
    /// The command-line flag, without dashes: the key with dashes, or `no-KEY` for a switch that
    /// is on by default.
    pub fn flag(&self) -> String {
        let flag = self.key.replace('_', "-");
        if self.on_by_default() {
            format!("no-{flag}")
        } else {
            flag
        }
    }

    /// A switch that is on by default: its flag (`--no-KEY`) turns it off.
    pub fn on_by_default(&self) -> bool {
        self.kind == Kind::Bool && default_value(self.key) == Value::Bool(true)
    }

    /// Reads the setting's value from text, as typed in a form field or given to a flag. The
    /// error says what the setting wants (the caller names the field).
    pub fn parse(&self, text: &str) -> std::result::Result<Value, String> {
        let choices = match self.kind {
            Kind::Choice(names) => names,
            _ => &[],
        };
        parse_as(self.kind.name(), choices, text)
    }

    /// The setting as the API's schema describes it.
    pub fn info(&self) -> SettingInfo {
        SettingInfo {
            key: self.key.into(),
            label: self.label.into(),
            help: self.help.into(),
            kind: self.kind.name().into(),
            choices: match self.kind {
                Kind::Choice(names) => names.iter().map(|n| n.to_string()).collect(),
                _ => Vec::new(),
            },
            default: default_value(self.key),
            section: self.section,
            form: self.form,
            flag: format!("--{}", self.flag()),
        }
    }
}

/// One setting in the API's schema (`GET /api/settings`), from which the web form is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingInfo {
    /// The key in `RUN/config.toml` and the API's `config`.
    pub key: String,
    pub label: String,
    pub help: String,
    /// `path`, `choice`, `float`, `int`, `optional_int`, `bool`, `list` or `range`.
    pub kind: String,
    /// The names a `choice` takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// `RunConfig::default()`'s value (`null`: unset).
    pub default: Value,
    pub section: Section,
    pub form: Form,
    /// The `clo train` flag that sets it.
    pub flag: String,
}

impl SettingInfo {
    /// Reads this setting's value from text, by its kind ([`parse_as`]).
    pub fn parse(&self, text: &str) -> std::result::Result<Value, String> {
        let choices: Vec<&str> = self.choices.iter().map(String::as_str).collect();
        parse_as(&self.kind, &choices, text)
    }

    /// The text a form field starts with: the default's (`""` when unset).
    pub fn default_text(&self) -> String {
        value_text(&self.default)
    }
}

/// The schema of every setting, in [`SETTINGS`]' order.
pub fn schema() -> Vec<SettingInfo> {
    SETTINGS.iter().map(Setting::info).collect()
}

impl RunConfig {
    /// This config with the given settings' values in place (values as [`Setting::parse`]
    /// reads them). An unknown key or a value its field does not take is an error naming it.
    pub fn with_settings<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> Result<RunConfig> {
        let Value::Object(mut fields) =
            serde_json::to_value(self).map_err(|e| CoreError::Internal(e.to_string()))?
        else {
            return Err(CoreError::Internal("a run config is an object".into()));
        };
        for (key, value) in changes {
            if setting(key).is_none() {
                return Err(CoreError::Invalid(format!("`{key}` is not a run setting")));
            }
            // One field at a time, so that an error names the one that is wrong.
            let mut probe = fields.clone();
            probe.insert(key.to_string(), value);
            serde_json::from_value::<RunConfig>(Value::Object(probe.clone()))
                .map_err(|e| CoreError::Invalid(format!("{key}: {e}")))?;
            fields = probe;
        }
        serde_json::from_value(Value::Object(fields))
            .map_err(|e| CoreError::Internal(e.to_string()))
    }
}
