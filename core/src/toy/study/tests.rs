use super::*;
use crate::infer::generate::StopReason;
use crate::toy::quickstart::ToyStats;

fn item(id: &str, lang: &str, correct: bool, in_language: bool) -> ToyItem {
    ToyItem {
        id: id.into(),
        kind: "sum".into(),
        lang: lang.into(),
        prompt: String::new(),
        response: String::new(),
        expected: String::new(),
        correct,
        detected: Some(if in_language {
            lang.into()
        } else {
            "en".into()
        }),
        in_language,
        s_index: None,
        stop: StopReason::Eos,
    }
}

#[test]
fn win_rate_splits_ties_and_matches_questions_by_id() {
    let a = vec![
        item("1", "zir", true, true),
        item("2", "zir", true, true),
        item("3", "zir", false, true),
        item("4", "zir", true, false),
        item("1", "en", true, true),
    ];
    let b = vec![
        item("2", "zir", false, false),
        item("1", "zir", true, true),
        item("3", "zir", true, true),
        item("4", "zir", false, true),
    ];
    // 1: tie 0.5; 2: win 1; 3: loss 0; 4: neither right-and-in-language, tie 0.5.
    assert_eq!(win_rate(&a, &b, Lang::Zir), Some(0.5));
    assert_eq!(win_rate(&b, &a, Lang::Zir), Some(0.5));
    assert_eq!(win_rate(&a[1..2], &b, Lang::Zir), Some(1.0));
    assert_eq!(win_rate(&a, &b, Lang::Vel), None);
}

/// The choice reads the validation score only: the best score wins, the first on a tie.
#[test]
fn choice_takes_the_best_validation_score() {
    let t = |lr: f64, s: f64| Trial {
        setting: Setting::new(lr, 0.1),
        validation_score: s,
        best_val_loss: Some(1.0 / lr),
    };
    let trials = [t(1e-4, 0.2), t(3e-4, 0.5), t(1e-3, 0.5), t(3e-3, 0.1)];
    assert_eq!(choose(&trials).unwrap().setting.lr, 3e-4);
    // 6/52 + 51/52 and 5/52 + 52/52 differ in the last bit: a tie, the first wins.
    let (a, b): (f64, f64) = (6.0 / 52.0 + 51.0 / 52.0, 5.0 / 52.0 + 52.0 / 52.0);
    let trials = [t(1e-4, a.min(b) / 2.0), t(3e-4, a.max(b) / 2.0)];
    assert_eq!(choose(&trials).unwrap().setting.lr, 1e-4);
    assert!(choose(&[]).is_none());
    let r = ToyResults {
        task: "toy".into(),
        model: "m".into(),
        per_language: [
            (
                "en".to_string(),
                ToyStats::of(&[&item("1", "en", true, true)]),
            ),
            (
                "vel".to_string(),
                ToyStats::of(&[&item("1", "vel", true, false)]),
            ),
        ]
        .into_iter()
        .collect(),
    };
    // English right (1.0); vel right but not in vel (0.0).
    assert_eq!(validation_score(&r, Lang::Vel), 0.5);
}

#[test]
fn right_kind_reads_the_response() {
    let with = |response: &str, expected: &str| ToyItem {
        response: response.into(),
        expected: expected.into(),
        ..item("1", "vel", false, true)
    };
    let items = [
        // Wrong pet, but a pet statement in vel.
        with("Ana hapa zemaku.", "Ana hapa zebexo."),
        // A books statement for a pet question.
        with("Ana hapa 3 ridoku.", "Ana hapa zebexo."),
        // The right pet, in English.
        with("Ana has a dog.", "Ana hapa zebexo."),
        with("Ana hapa zebexo. Ana hapa zebexo.", "Ana hapa zebexo."),
    ];
    assert_eq!(right_kind(&items, Lang::Vel), Some(0.25));
    assert_eq!(right_kind(&items, Lang::Zir), None);
}

#[test]
fn grids_tune_beta_only_where_asked() {
    let c = StudyConfig::default();
    assert_eq!(c.grid(Method::Sft).len(), c.lr_grid.len());
    assert_eq!(
        c.grid(Method::Clo).len(),
        c.lr_grid.len() * c.beta_grid.len()
    );
    assert!(
        c.grid(Method::Sft)
            .iter()
            .all(|(_, b)| *b == c.beta_grid[0])
    );
    assert!(
        StudyConfig {
            langs: vec![Lang::En],
            ..c.clone()
        }
        .check()
        .is_err()
    );
    assert!(c.check().is_ok());
}
