//! The new-run form: which settings it shows, their help, and how the typed-in text becomes the
//! `config` of a [`RunRequest`](crate::types::RunRequest). Defaults come from the server
//! (`GET /api/run-config`, `clo train`'s own), so the form never states a default of its own.

use std::collections::BTreeMap;

use clo_core::train::{Method, RunConfig, TrainableKind};
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
    /// Shown under "More settings".
    pub advanced: bool,
}

impl Field {
    /// The setting's help: clo-core's, the text `clo train --help` shows too.
    pub fn help(&self) -> &'static str {
        clo_core::train::config::setting_help(self.key)
    }
}

const fn field(key: &'static str, label: &'static str, kind: Kind, advanced: bool) -> Field {
    Field {
        key,
        label,
        kind,
        advanced,
    }
}

/// The methods and trainable sets, as clo-core names them.
pub const METHODS: &[&str] = &Method::NAMES;
pub const TRAINABLE: &[&str] = &TrainableKind::NAMES;

/// The settings the form offers, in order.
pub const FIELDS: &[Field] = &[
    field("method", "Method", Kind::Choice(METHODS), false),
    field(
        "trainable",
        "Trainable weights",
        Kind::Choice(TRAINABLE),
        false,
    ),
    field("lr", "Learning rate", Kind::Float, false),
    field("beta", "β (DPO temperature)", Kind::Float, false),
    field("lambda", "λ (NLL weight)", Kind::Float, false),
    field("epochs", "Epochs", Kind::Int, false),
    field("steps", "Steps", Kind::OptInt, false),
    field("batch_size", "Batch size", Kind::Int, false),
    field("grad_accum", "Gradient accumulation", Kind::Int, true),
    field("warmup", "Warmup", Kind::Float, true),
    field("min_lr", "Minimum learning rate", Kind::Float, true),
    field("max_len", "Max length", Kind::Int, true),
    field("lora_rank", "LoRA rank", Kind::Int, true),
    field("lora_alpha", "LoRA α", Kind::Float, true),
    field("weight_decay", "Weight decay", Kind::Float, true),
    field("max_grad_norm", "Max gradient norm", Kind::Float, true),
    field("val_fraction", "Validation share", Kind::Float, true),
    field("eval_every", "Validate every", Kind::OptInt, true),
    field("seed", "Seed", Kind::Int, true),
    field(
        "logp_chunk",
        "Log-prob chunk (positions, 0: off)",
        Kind::Int,
        true,
    ),
    field("dpop", "DPO-Positive weight (0: off)", Kind::Float, true),
    field(
        "dtype",
        "Frozen weights' precision",
        Kind::Choice(DTYPES),
        true,
    ),
];

/// The storage types of `dtype`.
pub const DTYPES: &[&str] = &["f32", "f16", "bf16", "auto"];

/// The text a field starts with: the default's value (`""` for an unset one).
pub fn default_text(defaults: &Map<String, Value>, key: &str) -> String {
    match defaults.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The request's typed `config`: the defaults with the fields whose text differs from them. An
/// error names the field and what it wants.
pub fn config_from_form(
    values: &BTreeMap<String, String>,
    defaults: &Map<String, Value>,
) -> Result<RunConfig, String> {
    let changed = changed_settings(values, defaults)?;
    serde_json::from_value(Value::Object(changed.into_iter().collect()))
        .map_err(|e| format!("settings: {e}"))
}

/// Each field whose text differs from its default, typed by its kind. An error names the field
/// and what it wants.
pub fn changed_settings(
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
        let c = changed_settings(&values, &d).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"method": "sft", "epochs": 3, "steps": 12, "beta": 0.25})
        );
        // A default left as it is changes nothing; clearing an optional one neither.
        let c = changed_settings(&form(&[("steps", ""), ("method", "clo")]), &d).unwrap();
        assert!(c.is_empty(), "{c:?}");
        // The request carries the typed config: the changes over the defaults.
        let typed = config_from_form(&values, &d).unwrap();
        assert_eq!(
            (typed.method, typed.epochs, typed.steps, typed.beta),
            (Method::Sft, 3, Some(12), 0.25)
        );
        assert_eq!(typed.lr, RunConfig::default().lr);
    }

    #[test]
    fn bad_text_names_the_field() {
        let d = defaults();
        let e = changed_settings(&form(&[("epochs", "two")]), &d).unwrap_err();
        assert!(e.starts_with("Epochs: give a whole number"), "{e}");
        let e = changed_settings(&form(&[("method", "magic")]), &d).unwrap_err();
        assert!(e.contains("choose one of clo, sft"), "{e}");
        let e = changed_settings(&form(&[("lr", "inf")]), &d).unwrap_err();
        assert!(e.contains("finite"), "{e}");
    }

    /// Every field of the form is a run setting with clo-core's help, and offers clo-core's
    /// names.
    #[test]
    fn fields_are_settings_with_the_shared_help() {
        for f in FIELDS {
            assert!(!f.help().is_empty(), "{} has no help in clo-core", f.key);
        }
        assert!(METHODS.contains(&"sft+dpo") && TRAINABLE.contains(&"lora"));
    }
}
