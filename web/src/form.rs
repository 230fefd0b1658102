//! The new-run form: which settings it shows, their help, and how the typed-in text becomes the
//! `config` of a [`RunRequest`](crate::types::RunRequest). The fields are the server's schema
//! (`GET /api/settings`, built from clo-core's settings table, as `clo train`'s flags are):
//! labels, help, kinds, choices and defaults all come from it, so the form states none of its
//! own.

use std::collections::BTreeMap;

use clo_core::api::{SettingForm, SettingInfo};
use clo_core::train::RunConfig;
use serde_json::Value;

/// The schema's settings the form shows in `place` (basic or advanced), in its order.
pub fn fields(schema: &[SettingInfo], place: SettingForm) -> Vec<SettingInfo> {
    schema.iter().filter(|s| s.form == place).cloned().collect()
}

/// The form's starting text: each field's default.
pub fn default_values(schema: &[SettingInfo]) -> BTreeMap<String, String> {
    schema
        .iter()
        .filter(|s| s.form != SettingForm::Hidden)
        .map(|s| (s.key.clone(), s.default_text()))
        .collect()
}

/// The request's typed `config`: the defaults with the fields whose text differs from them. An
/// error names the field and what it wants.
pub fn config_from_form(
    values: &BTreeMap<String, String>,
    schema: &[SettingInfo],
) -> Result<RunConfig, String> {
    let changed = changed_settings(values, schema)?;
    serde_json::from_value(Value::Object(changed.into_iter().collect()))
        .map_err(|e| format!("settings: {e}"))
}

/// Each field whose text differs from its default, read by its kind. An error names the field
/// and what it wants.
pub fn changed_settings(
    values: &BTreeMap<String, String>,
    schema: &[SettingInfo],
) -> Result<BTreeMap<String, Value>, String> {
    let mut config = BTreeMap::new();
    for f in schema.iter().filter(|s| s.form != SettingForm::Hidden) {
        let Some(text) = values.get(&f.key) else {
            continue;
        };
        if text.trim() == f.default_text() {
            continue;
        }
        let value = f.parse(text).map_err(|e| format!("{}: {e}", f.label))?;
        config.insert(f.key.clone(), value);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clo_core::train::Method;

    fn form(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_changed_fields_are_sent_with_their_types() {
        let schema = clo_core::train::config::schema();
        let mut values = default_values(&schema);
        values.extend(form(&[
            ("method", "sft"),
            ("epochs", "3"),
            ("steps", " 12 "),
            ("beta", "0.25"),
            ("layers", "0,2"),
            ("grad_checkpoint", "true"),
        ]));
        let c = changed_settings(&values, &schema).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({"method": "sft", "epochs": 3, "steps": 12, "beta": 0.25,
                "layers": [0, 2], "grad_checkpoint": true})
        );
        // Defaults left as they are change nothing; clearing an optional one neither.
        let mut unchanged = default_values(&schema);
        unchanged.insert("steps".into(), "".into());
        assert!(changed_settings(&unchanged, &schema).unwrap().is_empty());
        // The request carries the typed config: the changes over the defaults.
        let typed = config_from_form(&values, &schema).unwrap();
        assert_eq!(
            (typed.method, typed.epochs, typed.steps, typed.beta),
            (Method::Sft, 3, Some(12), 0.25)
        );
        assert_eq!(typed.lr, RunConfig::default().lr);
        assert_eq!(typed.layers, Some([0, 2]));
    }

    #[test]
    fn bad_text_names_the_field() {
        let schema = clo_core::train::config::schema();
        let e = changed_settings(&form(&[("epochs", "two")]), &schema).unwrap_err();
        assert!(e.starts_with("Epochs: give a whole number"), "{e}");
        let e = changed_settings(&form(&[("method", "magic")]), &schema).unwrap_err();
        assert!(e.contains("choose one of clo, sft"), "{e}");
        let e = changed_settings(&form(&[("lr", "inf")]), &schema).unwrap_err();
        assert!(e.contains("finite"), "{e}");
    }

    /// The form shows every setting but the model and dataset (chosen from lists), the basic ones
    /// first; the model and data are never read from fields.
    #[test]
    fn the_form_is_the_schema() {
        let schema = clo_core::train::config::schema();
        let basic = fields(&schema, SettingForm::Basic);
        let advanced = fields(&schema, SettingForm::Advanced);
        assert_eq!(basic.len() + advanced.len() + 2, schema.len());
        assert!(basic.iter().any(|f| f.key == "method"));
        assert!(advanced.iter().any(|f| f.key == "grad_checkpoint"));
        assert!(advanced.iter().any(|f| f.key == "attention"));
        let c = changed_settings(&form(&[("model", "/etc")]), &schema).unwrap();
        assert!(c.is_empty());
    }
}
