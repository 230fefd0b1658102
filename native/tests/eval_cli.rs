//! `clo eval mc` against log-likelihoods computed independently with transformers
//! (tests/fixtures/make_eval_fixture.py, which writes its own prompts from paper table 7).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn eval_mc(tasks: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(["eval", "mc", "--model"])
        .arg(fixtures().join("models/llama3"))
        .arg("--tasks")
        .arg(tasks)
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "3"])
        .output()
        .unwrap()
}

#[test]
fn mc_matches_transformers_log_likelihoods_and_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = eval_mc(&fixtures().join("eval/mc_tasks.jsonl"), dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("eval/mc_expected.json")).unwrap(),
    )
    .unwrap();
    let responses: Vec<Value> = std::fs::read_to_string(dir.path().join("responses.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let items = expected["items"].as_array().unwrap();
    assert_eq!(responses.len(), items.len());
    for (got, want) in responses.iter().zip(items) {
        assert_eq!(got["lang"], want["lang"]);
        for k in 0..4 {
            let (g, w) = (
                got["logps"][k].as_f64().unwrap(),
                want["logps"][k].as_f64().unwrap(),
            );
            assert!((g - w).abs() < 1e-4, "{got} vs {want}");
        }
        assert_eq!(got["pred"], want["pred"]);
        assert_eq!(got["correct"], want["correct"]);
    }
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    for (lang, acc) in expected["accuracy"].as_object().unwrap() {
        let got = results["per_language"][lang]["accuracy"].as_f64().unwrap();
        assert!((got - acc.as_f64().unwrap()).abs() < 1e-12, "{lang}");
    }
    assert_eq!(results["overall"]["n"], items.len());
    assert_eq!(results["task"], "mc");
}

#[test]
fn mc_refuses_bad_tasks_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fixtures().join("eval/mc_tasks.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    for (bad, want) in [
        (
            first.replace(r#""answer": 0"#, r#""answer": 7"#),
            "answer 7 is out of range",
        ),
        (
            first.replace(r#""lang": "en""#, r#""lang": "qq""#),
            "unknown language code `qq`",
        ),
        (first.replace(r#", "Under the bed""#, ""), "3 options"),
    ] {
        let tasks = dir.path().join("tasks.jsonl");
        std::fs::write(&tasks, format!("{first}\n{bad}\n")).unwrap();
        let out = eval_mc(&tasks, &dir.path().join("out"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("tasks.jsonl:2:") && err.contains(want),
            "{err}"
        );
        assert!(
            !dir.path().join("out/results.json").exists(),
            "nothing written"
        );
    }
}
