use super::*;

fn item(lang: &str, kind: &str, correct: bool, in_language: bool) -> ToyItem {
    ToyItem {
        id: "x".into(),
        kind: kind.into(),
        lang: lang.into(),
        prompt: String::new(),
        response: String::new(),
        expected: String::new(),
        correct,
        detected: None,
        in_language,
        s_index: None,
        stop: StopReason::Eos,
    }
}

/// The quickstart's defaults are the study's choices for `toy` (its recorded tuning).
#[test]
fn tuned_defaults_are_the_study_choices() {
    let tuning: serde_json::Value =
        serde_json::from_str(include_str!("../../../assets/toy-study/tuning.json")).unwrap();
    for (method, t) in TUNED {
        let chosen = &tuning["toy"][method.name()];
        assert_eq!(chosen["lr"].as_f64(), Some(t.lr), "{}", method.name());
        assert_eq!(chosen["beta"].as_f64(), Some(t.beta), "{}", method.name());
        // The chosen setting is the trial with the best validation score.
        let best = chosen["trials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["validation_score"].as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        let mine = chosen["trials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["lr"].as_f64() == Some(t.lr) && x["beta"].as_f64() == Some(t.beta))
            .unwrap();
        assert_eq!(mine["validation_score"].as_f64(), Some(best));
    }
    let c = QuickstartConfig::default();
    assert_eq!(c.setting(Method::Clo), (3e-4, 0.1));
    assert_eq!(c.setting(Method::Dpo), (c.lr, c.beta));
}

#[test]
fn stats_and_rows_count_what_they_say() {
    let items = vec![
        item("toy", "sum", true, false),
        item("toy", "sum", true, true),
        item("toy", "pet", false, true),
        item("toy", "pet", false, false),
        item("en", "sum", true, true),
    ];
    let r = toy_results(Path::new("m"), &items);
    let toy = &r.per_language["toy"];
    assert_eq!(
        (toy.n, toy.fidelity.correct, toy.accuracy.correct),
        (4, 2, 2)
    );
    assert_eq!(toy.correct_in_language.correct, 1);
    assert_eq!(toy.per_kind["sum"].accuracy, 1.0);
    assert_eq!(toy.per_kind["pet"].accuracy, 0.0);
    // Two seeds: mean of the two and the standard error across them.
    let other = toy_results(Path::new("m"), &items[..2]);
    let row = row("clo", Some(10), &[(r.clone(), 1.0), (other, 3.0)]);
    let (mean, se) = row.accuracy["toy"];
    assert!((mean - 0.75).abs() < 1e-12, "{mean}");
    // sd of (0.5, 1.0) is 0.3536; / sqrt(2) = 0.25
    assert!((se - 0.25).abs() < 1e-12, "{se}");
    assert_eq!(row.train_s, Some(2.0));
}

/// With several sizes the report has the three curves, each with a line per method and a
/// flat base line, and the table a row per method and size.
#[test]
fn report_draws_curves_against_size() {
    let items = vec![
        item("toy", "sum", true, true),
        item("en", "sum", true, true),
    ];
    let r = toy_results(Path::new("m"), &items);
    let mut rows = vec![row("base", None, &[(r.clone(), f64::NAN)])];
    for m in ["clo", "sft"] {
        for n in [10, 20] {
            rows.push(row(m, Some(n), &[(r.clone(), 1.0)]));
        }
    }
    let results = QuickstartResults {
        config: QuickstartConfig {
            sizes: vec![10, 20],
            ..Default::default()
        },
        base_model: "m".into(),
        questions: 1,
        rows,
        wall_s: 1.0,
    };
    let files = render_report(&results);
    for f in [
        "fidelity_vs_size.svg",
        "accuracy_vs_size.svg",
        "en_accuracy_vs_size.svg",
    ] {
        // Three series: a line and a legend entry each.
        assert_eq!(
            crate::eval::charts::series_marks(&files[f], "polyline"),
            2 * 3,
            "{f}"
        );
    }
    let md = &files["report.md"];
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| clo |") || l.starts_with("| sft |"))
            .count(),
        4
    );
    assert!(md.contains("![Target-language accuracy against data size](accuracy_vs_size.svg)"));
}
