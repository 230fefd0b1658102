//! The new-run form: which settings it shows, their help, and how the typed-in text becomes the
//! `config` of a [`RunRequest`](crate::types::RunRequest). Defaults come from the server
//! (`GET /api/run-config`, `clo train`'s own), so the form never states a default of its own.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One of these names.
    Choice(&'static [&'static str]),
    /// A real number.
    Float,
    /// A whole number.
    Int,
    /// A whole number, or empty for "unset" (`null`).
    OptInt,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The key in `RUN/run.toml` (a `clo train` setting).
    pub key: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Shown under "More settings".
    pub advanced: bool,
}

const fn field(
    key: &'static str,
    label: &'static str,
    kind: Kind,
    help: &'static str,
    advanced: bool,
) -> Field {
    Field {
        key,
        label,
        kind,
        help,
        advanced,
    }
}

pub const METHODS: &[&str] = &["clo", "sft", "sft-eng", "sft-tgt", "dpo", "sft+dpo"];
pub const TRAINABLE: &[&str] = &["attention", "lora", "full"];

/// The settings the form offers, in order.
pub const FIELDS: &[Field] = &[
    field(
        "method",
        "Method",
        Kind::Choice(METHODS),
        "clo: λ·NLL of the target response + (1−λ)·a DPO-style loss preferring the English answer to English prompts and the target answer to target prompts (the paper). sft: NLL on both languages; sft-eng / sft-tgt: on one; dpo: the preference loss alone; sft+dpo: sft, then dpo from it.",
        false,
    ),
    field(
        "trainable",
        "Trainable weights",
        Kind::Choice(TRAINABLE),
        "attention: only the q/k/v/o projections train (the paper); lora: low-rank adapters on them; full: every weight.",
        false,
    ),
    field(
        "lr",
        "Learning rate",
        Kind::Float,
        "Peak AdamW learning rate, reached after the warmup, then a cosine decay to the minimum. Paper: 5e-5.",
        false,
    ),
    field(
        "beta",
        "β (DPO temperature)",
        Kind::Float,
        "How strongly the preference term holds the model near the frozen reference; larger β, smaller steps away from it. Paper: 0.1.",
        false,
    ),
    field(
        "lambda",
        "λ (NLL weight)",
        Kind::Float,
        "Weight of the NLL term on target responses; 1−λ weighs the preference term. Paper: 0.5.",
        false,
    ),
    field(
        "epochs",
        "Epochs",
        Kind::Int,
        "Passes over the training split, when Steps is empty. Paper: 1.",
        false,
    ),
    field(
        "steps",
        "Steps",
        Kind::OptInt,
        "Optimizer steps per stage; empty: the epochs decide.",
        false,
    ),
    field(
        "batch_size",
        "Batch size",
        Kind::Int,
        "Examples per micro-batch: quadruples (clo), preference pairs (dpo) or pairs (sft).",
        false,
    ),
    field(
        "grad_accum",
        "Gradient accumulation",
        Kind::Int,
        "Micro-batches per optimizer step.",
        true,
    ),
    field(
        "warmup",
        "Warmup",
        Kind::Float,
        "Linear warmup: a share of the steps when below 1, else a number of steps. Paper: 0.03.",
        true,
    ),
    field(
        "min_lr",
        "Minimum learning rate",
        Kind::Float,
        "Where the cosine decay ends.",
        true,
    ),
    field(
        "max_len",
        "Max length",
        Kind::Int,
        "Longest prompt + response in tokens; longer examples are dropped.",
        true,
    ),
    field(
        "lora_rank",
        "LoRA rank",
        Kind::Int,
        "Rank of the adapters (trainable = lora).",
        true,
    ),
    field(
        "lora_alpha",
        "LoRA α",
        Kind::Float,
        "Scale of the adapters: their update is multiplied by α / rank.",
        true,
    ),
    field(
        "weight_decay",
        "Weight decay",
        Kind::Float,
        "AdamW's decoupled weight decay.",
        true,
    ),
    field(
        "max_grad_norm",
        "Max gradient norm",
        Kind::Float,
        "Gradients are clipped to this global L2 norm.",
        true,
    ),
    field(
        "val_fraction",
        "Validation share",
        Kind::Float,
        "Share of the quadruples held out to validate; the best checkpoint is the one with the lowest validation loss.",
        true,
    ),
    field(
        "eval_every",
        "Validate every",
        Kind::OptInt,
        "Validate every K steps; empty: 10 times a stage.",
        true,
    ),
    field(
        "seed",
        "Seed",
        Kind::Int,
        "Seeds the shuffling, the split and any random initialisation.",
        true,
    ),
];

/// The text a field starts with: the default's value (`""` for an unset one).
pub fn default_text(defaults: &Map<String, Value>, key: &str) -> String {
    match defaults.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The request's `config`: each field whose text differs from its default, typed by its kind.
/// An error names the field and what it wants.
pub fn config_from_form(
    values: &BTreeMap<String, String>,
    defaults: &Map<String, Value>,
) -> Result<BTreeMap<String, Value>, String> {
    let mut config = BTreeMap::new();
    for f in FIELDS {
        let Some(text) = values.get(f.key) else {
            continue;
        };
        let text = text.trim();
        if text == default_text(defaults, f.key) {
            continue;
        }
        let bad = |what: &str| format!("{}: {what}, not {text:?}", f.label);
        let value = match f.kind {
            Kind::Choice(names) => {
                if !names.contains(&text) {
                    return Err(bad(&format!("choose one of {}", names.join(", "))));
                }
                Value::String(text.into())
            }
            Kind::Float => {
                let x: f64 = text.parse().map_err(|_| bad("give a number"))?;
                if !x.is_finite() {
                    return Err(bad("give a finite number"));
                }
                serde_json::json!(x)
            }
            Kind::Int => Value::from(
                text.parse::<u64>()
                    .map_err(|_| bad("give a whole number"))?,
            ),
            Kind::OptInt if text.is_empty() => Value::Null,
            Kind::OptInt => Value::from(
                text.parse::<u64>()
                    .map_err(|_| bad("give a whole number or leave it empty"))?,
            ),
        };
        config.insert(f.key.to_string(), value);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Map<String, Value> {
        serde_json::json!({"method": "clo", "lr": 5e-5, "epochs": 1, "steps": null, "beta": 0.1})
            .as_object()
            .unwrap()
            .clone()
    }

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_changed_fields_are_sent_with_their_types() {
        let d = defaults();
        let values = form(&[
            ("method", "sft"),
            ("lr", &default_text(&d, "lr")),
            ("epochs", "3"),
            ("steps", " 12 "),
            ("beta", "0.25"),
        ]);
        let c = config_from_form(&values, &d).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"method": "sft", "epochs": 3, "steps": 12, "beta": 0.25})
        );
        // A default left as it is sends nothing; clearing an optional one sends nothing either.
        let c = config_from_form(&form(&[("steps", ""), ("method", "clo")]), &d).unwrap();
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn bad_text_names_the_field() {
        let d = defaults();
        let e = config_from_form(&form(&[("epochs", "two")]), &d).unwrap_err();
        assert!(e.starts_with("Epochs: give a whole number"), "{e}");
        let e = config_from_form(&form(&[("method", "magic")]), &d).unwrap_err();
        assert!(e.contains("choose one of clo, sft"), "{e}");
        let e = config_from_form(&form(&[("lr", "inf")]), &d).unwrap_err();
        assert!(e.contains("finite"), "{e}");
    }
}
