//! `clo pretrain` and `clo quickstart` as a user runs them: a tiny pretraining writes a model
//! directory clo loads; the quickstart runs end to end on the shipped toy model, reports numbers
//! that match its per-response files, and a second run reuses every finished run and eval.

use std::path::Path;
use std::process::{Command, Output};

use clo_core::eval::results::EvalResults;
use std::collections::{BTreeMap, HashSet};

use clo_core::eval::langid::LanguageIdentifier;
use clo_core::toy::ToyLangId;
use clo_core::toy::data::{CorpusConfig, EVAL_PEOPLE, EvalQuestion, eval_questions, quadruples};
use clo_core::toy::quickstart::{QuickstartResults, ToyItem, eval_toy};
use clo_core::toy::shipped::{shipped_world, write_shipped_model};
use clo_core::toy::study::{StudyResults, english_centric};
use clo_core::toy::world::{Lang, World, atoms, parse, render};

fn clo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(args)
        .output()
        .expect("clo runs")
}

fn ok(out: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "clo failed:\n{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn items(path: &Path) -> Vec<ToyItem> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pretrain_writes_a_model_directory_of_the_toy_world() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let (stdout, _) = ok(clo(&[
        "pretrain",
        "--out",
        out.to_str().unwrap(),
        "--world-seed",
        "3",
        "--documents",
        "400",
        "--steps",
        "30",
        "--batch-size",
        "16",
        "--vocab-size",
        "320",
        "--hidden-size",
        "32",
        "--intermediate-size",
        "64",
        "--layers",
        "1",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--warmup-steps",
        "3",
    ]));
    assert!(stdout.contains("pretrained"), "{stdout}");
    let world: World = read(&out.join("toy_world.json"));
    assert_eq!(world, World::new(3));
    let summary: serde_json::Value = read(&out.join("pretrain.json"));
    let (first, last) = (
        summary["first_loss"].as_f64().unwrap(),
        summary["last_loss"].as_f64().unwrap(),
    );
    assert!(last < first, "loss {first} -> {last}");
    let command = summary["corpus"]["command"].as_array().unwrap();
    assert!(
        command.iter().any(|a| a == "--world-seed"),
        "the command is recorded"
    );
    // The result is an ordinary model directory.
    let (inspect, _) = ok(clo(&[
        "inspect",
        "--model",
        out.to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["model_type"], "llama");
    assert_eq!(v["num_layers"], 1);
    assert_eq!(v["chat_template"], true);

    // A corpus file with a bad line is refused with the file and line.
    let bad = dir.path().join("corpus.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"txet\": 1}\n").unwrap();
    let out2 = clo(&[
        "pretrain",
        "--out",
        dir.path().join("m2").to_str().unwrap(),
        "--corpus",
        bad.to_str().unwrap(),
    ]);
    assert!(!out2.status.success());
    let stderr = String::from_utf8_lossy(&out2.stderr);
    assert!(stderr.contains("corpus.jsonl:2"), "{stderr}");
}

#[test]
fn quickstart_runs_end_to_end_on_the_shipped_model_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q");
    let args = [
        "quickstart",
        "--out",
        out.to_str().unwrap(),
        "--sizes",
        "24",
        "--per-kind",
        "2",
        "--epochs",
        "1",
    ];
    let (stdout, stderr) = ok(clo(&args));
    for row in [
        "| base |",
        "| sft | 24 | 1 |",
        "| clo | 24 | 1 |",
        "toy fidelity",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    assert!(stderr.contains("train clo-n24-s0"), "{stderr}");

    let results: QuickstartResults = read(&out.join("results.json"));
    let n_questions = 4 * EVAL_PEOPLE + 4 * 2;
    assert_eq!(results.questions, n_questions);
    assert_eq!(results.rows.len(), 3);

    // The base model's numbers are those of its responses, re-checked here from the text.
    let base = items(&out.join("base-eval/responses.jsonl"));
    assert_eq!(base.len(), 2 * n_questions);
    for i in &base {
        let lang: Lang = i.lang.parse().unwrap();
        assert!(parse(&i.prompt, lang).is_some(), "{}", i.prompt);
        assert_eq!(i.correct, atoms(&i.response) == atoms(&i.expected), "{i:?}");
    }
    let share = |lang: &str, f: &dyn Fn(&ToyItem) -> bool| {
        let mine: Vec<&ToyItem> = base.iter().filter(|i| i.lang == lang).collect();
        mine.iter().filter(|i| f(i)).count() as f64 / mine.len() as f64
    };
    let base_row = &results.rows[0];
    assert_eq!(base_row.system, "base");
    assert!((base_row.accuracy["en"].0 - share("en", &|i| i.correct)).abs() < 1e-12);
    assert!((base_row.fidelity["toy"].0 - share("toy", &|i| i.in_language)).abs() < 1e-12);
    // The shipped model is English-centric: it answers the held-out questions in English,
    // whichever language they are asked in (see `the_shipped_model_is_english_centric`).
    assert!(
        share("en", &|i| i.correct) >= 0.8,
        "English accuracy of the base model"
    );
    assert!(
        share("en", &|i| i.in_language) >= 0.9,
        "English fidelity of the base model"
    );
    assert!(
        share("toy", &|i| i.in_language) <= 0.1,
        "toy fidelity of the base model"
    );

    // Each model's eval is written as the one eval result type of `clo eval`.
    let Some(EvalResults::Toy {
        model,
        per_language,
        overall,
        ..
    }) = EvalResults::read(&out.join("runs/clo-n24-s0/eval/results.json")).unwrap()
    else {
        panic!("not a toy eval result")
    };
    assert_eq!(per_language["toy"].n, n_questions);
    assert_eq!(overall.n, 2 * n_questions);
    assert_eq!(model.weights_sha256.len(), 64);
    let quads = std::fs::read_to_string(out.join("data/quads-n24-s0.jsonl")).unwrap();
    assert_eq!(quads.lines().count(), 24);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| clo | 24 | 1 |") && report.contains("What the numbers mean"));
    for svg in ["fidelity.svg", "accuracy.svg", "correct_in_language.svg"] {
        assert!(
            std::fs::read_to_string(out.join(svg))
                .unwrap()
                .starts_with("<svg")
        );
    }

    // Run again: nothing is retrained or re-answered, and the table is the same.
    let metrics = out.join("runs/clo-n24-s0/metrics.jsonl");
    let before = std::fs::metadata(&metrics).unwrap().modified().unwrap();
    let (stdout2, stderr2) = ok(clo(&args));
    assert!(
        !stderr2.contains("train ") && !stderr2.contains("eval "),
        "{stderr2}"
    );
    assert_eq!(
        std::fs::metadata(&metrics).unwrap().modified().unwrap(),
        before
    );
    let table = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with('|'))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&stdout), table(&stdout2));

    // Other settings: a run made with the old ones is not reused but moved aside and retrained.
    let mut other = args.to_vec();
    other.extend(["--lr", "1e-4"]);
    let (_, stderr3) = ok(clo(&other));
    assert!(stderr3.contains("train clo-n24-s0"), "{stderr3}");
    let config = std::fs::read_to_string(out.join("runs/clo-n24-s0/config.toml")).unwrap();
    assert!(config.contains("lr = 0.0001"), "{config}");
    let aside = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("clo-n24-s0.replaced-")
        })
        .count();
    assert_eq!(aside, 1);
}

/// The shipped base model is English-centric in the paper's sense, before any adaptation: it
/// answers English questions right; asked in a toy language it answers in English (or fails);
/// and the scarcer the language in its pretraining text, the fewer it gets right. Its corpus had
/// the designed tiers.
#[test]
fn the_shipped_model_is_english_centric() {
    let dir = tempfile::tempdir().unwrap();
    write_shipped_model(dir.path()).unwrap();
    let summary: serde_json::Value = read(&dir.path().join("pretrain.json"));
    let shares: BTreeMap<Lang, f64> =
        serde_json::from_value(summary["corpus"]["toy_world"]["shares"].clone()).unwrap();
    assert_eq!(shares, CorpusConfig::default_shares());
    let world = shipped_world().unwrap();
    let train = quadruples(&world, Lang::Toy, 800, 0);
    let questions = eval_questions(&world, 12, world.seed, &train);
    let lm = clo_core::Pretrained::load(dir.path(), &burn::prelude::Device::flex()).unwrap();
    let items = eval_toy(&lm, &questions, &Lang::ALL, 40, 64, &mut |_| {}).unwrap();
    // Every verdict is re-checked from the text.
    for i in &items {
        assert_eq!(i.correct, atoms(&i.response) == atoms(&i.expected), "{i:?}");
        assert_eq!(
            i.in_language,
            ToyLangId.detect(&i.response).as_deref() == Some(i.lang.as_str())
        );
    }
    let e = english_centric(&items, &Lang::ALL);
    eprintln!("{e:#?}");
    assert!(e[&Lang::En].accuracy >= 0.9 && e[&Lang::En].fidelity >= 0.95);
    for lang in Lang::TARGETS {
        assert!(
            e[&lang].answered_in_english >= 0.8 && e[&lang].fidelity <= 0.1,
            "{lang}: {:?}",
            e[&lang]
        );
    }
    assert!(
        e[&Lang::En].accuracy > e[&Lang::Vel].accuracy
            && e[&Lang::Vel].accuracy > e[&Lang::Toy].accuracy
            && e[&Lang::Toy].accuracy > e[&Lang::Zir].accuracy,
        "accuracy falls with the language's share: {e:?}"
    );
}

/// A small study as a user runs it: tuning reads validation answers only (no validation
/// question is a test question), every verdict is re-checked from the text, win rates and the
/// report are there, and a second run redoes nothing.
#[test]
fn study_tunes_on_validation_and_reports_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let args = [
        "quickstart",
        "--study",
        "--out",
        out.to_str().unwrap(),
        "--sizes",
        "16,24",
        "--seeds",
        "0,1",
        "--per-kind",
        "2",
        "--lr",
        "1e-4,3e-3",
        "--beta",
        "0.1",
        "--dpop",
        "5",
        "--nll-lambda",
        "0.9",
        "--baselines",
        "sft-tgt",
        "--baseline-size",
        "16",
        "--tune-size",
        "16",
    ];
    let (stdout, stderr) = ok(clo(&args));
    for lang in ["vel", "toy", "zir"] {
        assert!(stdout.contains(&format!("### `{lang}`")), "{stdout}");
        assert!(
            stderr.contains(&format!("train {lang} clo-n24-s1")),
            "{stderr}"
        );
    }
    let results: StudyResults = read(&out.join("results.json"));
    let test: Vec<EvalQuestion> = read(&out.join("data/test.json"));
    let val: Vec<EvalQuestion> = read(&out.join("data/validation.json"));
    let test_x: HashSet<String> = test.iter().map(|q| render(&q.question, Lang::En)).collect();
    assert_eq!(results.test_questions, test.len());
    for (lang, methods) in &results.tuning {
        // The remedy is tuned (its DPO-Positive weight) at CLO's chosen lr and beta.
        let remedy = &methods["clo+dpop"];
        assert_eq!(
            (remedy.setting.lr, remedy.setting.beta, remedy.setting.dpop),
            (methods["clo"].setting.lr, 0.1, 5.0)
        );
        let remedy = &methods["clo+nll"];
        assert_eq!(
            (remedy.setting.lr, remedy.setting.lambda),
            (methods["clo"].setting.lr, Some(0.9))
        );
        for (method, t) in methods.iter().filter(|(m, _)| !m.starts_with("clo+")) {
            let mut best = (f64::MIN, 0.0);
            for lr in [1e-4, 3e-3] {
                // The tuning run's answers: validation questions only, re-checked from the text.
                let items = items(&out.join(format!(
                    "tune/{lang}/{method}-lr{lr:e}-b0.1/val-eval/responses.jsonl"
                )));
                assert_eq!(items.len(), 2 * val.len());
                let (mut right, mut en) = (0usize, 0usize);
                for i in &items {
                    let l: Lang = i.lang.parse().unwrap();
                    let q = parse(&i.prompt, l).unwrap();
                    assert!(!test_x.contains(&render(&q, Lang::En)), "{}", i.prompt);
                    assert_eq!(i.correct, atoms(&i.response) == atoms(&i.expected));
                    right += (l == *lang && i.correct && i.in_language) as usize;
                    en += (l == Lang::En && i.correct) as usize;
                }
                let score = (right + en) as f64 / (2 * val.len()) as f64;
                if score > best.0 {
                    best = (score, lr);
                }
            }
            assert_eq!(
                t.setting.lr, best.1,
                "{lang} {method}: chosen on validation"
            );
        }
    }
    // Rows: base, sft, clo, clo+dpop and clo+nll at both sizes, sft-tgt at 16, per language;
    // win rates against sft at 24, where sft's own is 0.5.
    assert_eq!(results.rows.len(), 3 * 10);
    for r in &results.rows {
        if r.method == "sft" && r.size == Some(24) {
            assert_eq!(r.win_rate.unwrap().value, 0.5);
        }
        if r.method.starts_with("clo") {
            assert!(r.rewards.is_some() && r.win_rate.is_some(), "{r:?}");
        }
    }
    assert_eq!(results.verdicts.len(), 3);
    let eval = items(&out.join("runs/zir/clo-n24-s1/eval/responses.jsonl"));
    assert_eq!(eval.len(), 2 * test.len());
    for i in &eval {
        assert_eq!(i.correct, atoms(&i.response) == atoms(&i.expected));
        assert_eq!(
            i.in_language,
            ToyLangId.detect(&i.response).as_deref() == Some(i.lang.as_str())
        );
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for svg in ["correct_zir.svg", "win_rate_vel.svg", "en_accuracy_toy.svg"] {
        assert!(report.contains(svg), "{svg}");
        assert!(
            std::fs::read_to_string(out.join(svg))
                .unwrap()
                .starts_with("<svg")
        );
    }
    // Run again: nothing is retrained or re-answered.
    let (stdout2, stderr2) = ok(clo(&args));
    assert!(
        !stderr2.contains("train ") && !stderr2.contains("eval "),
        "{stderr2}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>(),
        stdout2
            .lines()
            .filter(|l| l.starts_with('|'))
            .collect::<Vec<_>>()
    );
}
