//! The run settings: defaults, help texts, checks.
use super::*;
use serde_json::Value;

/// `dpop` reaches the objectives of clo and dpo (and is refused when negative).
#[test]
fn dpop_reaches_the_preference_objectives() {
    use crate::train::step::Objective;
    let c = RunConfig {
        dpop: 5.0,
        ..RunConfig::default()
    };
    assert!(matches!(
        crate::train::run::objective(Method::Clo, &c),
        Objective::Clo { dpop, .. } if dpop == 5.0
    ));
    assert!(matches!(
        crate::train::run::objective(Method::Dpo, &c),
        Objective::Dpo { dpop, .. } if dpop == 5.0
    ));
    assert_eq!(RunConfig::default().dpop, 0.0);
    let bad = RunConfig {
        dpop: -1.0,
        model: "m".into(),
        data: "d".into(),
        ..RunConfig::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("dpop"));
}

/// Every key of `RUN/config.toml` has one help text, and every help text is a key's; the
/// defaults shown come from `RunConfig::default()`.
#[test]
fn every_setting_has_one_help_and_its_default() {
    let value = serde_json::to_value(RunConfig::default()).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut documented: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
    documented.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, documented);
    assert!(
        SETTINGS
            .iter()
            .all(|s| !s.help.is_empty() && !s.help.contains("--"))
    );
    assert_eq!(setting_default("batch_size").as_deref(), Some("8"));
    assert_eq!(setting_default("steps"), None);
    assert_eq!(
        setting_default("lora_targets").as_deref(),
        Some("q_proj,k_proj,v_proj,o_proj")
    );
    assert!(setting_help_with_default("beta").ends_with("[default: 0.1]"));
}

#[test]
fn config_round_trips_through_toml_and_refuses_unknown_keys() {
    let config = RunConfig {
        model: "m".into(),
        data: "d.jsonl".into(),
        method: Method::SftDpo,
        layers: Some([1, 3]),
        steps: Some(50),
        ..RunConfig::default()
    };
    let text = config.to_toml();
    assert!(text.contains("method = \"sft+dpo\""), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(RunConfig::from_file(&path).unwrap(), config);

    std::fs::write(&path, "lr = 1e-4\nlearning_rate = 3\n").unwrap();
    let err = RunConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("run.toml:2"), "{err}");
    assert!(err.contains("learning_rate"), "{err}");
}

#[test]
fn defaults_are_the_papers() {
    let c = RunConfig::default();
    assert_eq!(
        (c.lr, c.min_lr, c.batch_size, c.epochs),
        (5e-5, 1.1e-6, 8, 1)
    );
    assert_eq!((c.beta, c.lambda, c.max_len), (0.1, 0.5, 3000));
    assert_eq!(c.warmup_steps(100), 3);
    assert_eq!(c.trainable_set(), Trainable::Attention { layers: None });
}

/// Each setting's kind fits its field: the default's text reads back to the default, every
/// choice is a value the field takes, and a bad text is refused with what the setting wants.
#[test]
fn every_setting_reads_its_own_text_and_its_choices() {
    let base = RunConfig::default();
    for s in SETTINGS {
        let default = default_value(s.key);
        if s.kind != Kind::Path {
            let read = s.parse(&value_text(&default)).unwrap();
            assert_eq!(read, default, "{}", s.key);
            assert_eq!(
                base.with_settings([(s.key, read)]).unwrap(),
                base,
                "{}",
                s.key
            );
        }
        if let Kind::Choice(names) = s.kind {
            assert!(names.contains(&default.as_str().unwrap()), "{}", s.key);
            for name in names {
                let v = s.parse(name).unwrap();
                let c = base.with_settings([(s.key, v.clone())]).unwrap();
                assert_eq!(serde_json::to_value(&c).unwrap()[s.key], v, "{}", s.key);
            }
            assert!(s.parse("nonsense").unwrap_err().contains("choose one of"));
        }
    }
    let get = |k| setting(k).unwrap();
    assert_eq!(
        get("layers").parse("4, 8").unwrap(),
        serde_json::json!([4, 8])
    );
    assert!(get("layers").parse("4").unwrap_err().contains("FROM,TO"));
    assert_eq!(get("steps").parse(" ").unwrap(), Value::Null);
    assert!(
        get("epochs")
            .parse("two")
            .unwrap_err()
            .starts_with("give a whole number")
    );
    assert!(get("lr").parse("inf").unwrap_err().contains("finite"));
    assert_eq!(
        get("lora_targets").parse("q_proj, v_proj").unwrap(),
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert_eq!(get("shuffle").flag(), "no-shuffle");
    assert_eq!(get("grad_checkpoint").flag(), "grad-checkpoint");
    assert_eq!(get("batch_size").flag(), "batch-size");
    // A value the field does not take, or a key that is not a setting, is named.
    let err = base
        .with_settings([("batch_size", serde_json::json!(-3))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_size"), "{err}");
    let err = base
        .with_settings([("learning_rate", serde_json::json!(1))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("learning_rate"), "{err}");
}

/// The schema the API serves names every setting once, with its kind, choices and default.
#[test]
fn the_schema_describes_every_setting() {
    let schema = schema();
    assert_eq!(schema.len(), SETTINGS.len());
    let lr = schema.iter().find(|s| s.key == "lr").unwrap();
    assert_eq!(
        (lr.kind.as_str(), &lr.default, lr.flag.as_str()),
        ("float", &serde_json::json!(5e-5), "--lr")
    );
    let method = schema.iter().find(|s| s.key == "method").unwrap();
    assert_eq!(method.choices, Method::NAMES.map(String::from).to_vec());
    assert!(
        schema
            .iter()
            .filter(|s| s.form == Form::Hidden)
            .map(|s| s.key.as_str())
            .eq(["model", "data"])
    );
}
