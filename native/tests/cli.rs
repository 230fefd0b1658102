//! The `clo` binary as a user runs it, on the parity fixtures of `tests/fixtures`
//! (expected numbers from transformers; see `tests/fixtures/make_fixtures.py`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

fn clo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(args)
        .output()
        .expect("clo runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn score_text_and_ids_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let exp = expected("llama3");
    let cases: Vec<&Value> = exp["scores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["chat_template"] == true)
        .collect();
    // Text lines go through the chat template; the ids line is scored as given.
    let mut lines = String::new();
    for c in &cases {
        lines += &serde_json::json!({"prompt": c["prompt"], "response": c["response"]}).to_string();
        lines += "\n";
    }
    lines += &serde_json::json!({"prompt_ids": cases[0]["prompt_ids"], "response_ids": cases[0]["response_ids"]}).to_string();
    lines += "\n\n";
    std::fs::write(&input, lines).unwrap();

    let model = fixture("llama3");
    // f32; and `--dtype f16|bf16` (weights stored in half precision) within the rounding of
    // their type: summed log-probs, measured worst |diff| f16 3.1e-3, bf16 2.6e-2.
    for (dtype, tolerance) in [("f32", 1e-3), ("f16", 1e-2), ("bf16", 6e-2)] {
        let out = clo(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--chat-template",
            "--batch-size",
            "2",
            "--dtype",
            dtype,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let got: Vec<Value> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), cases.len() + 1);
        let mut worst = 0f64;
        for (g, want) in got.iter().zip(cases.iter().chain([&cases[0]])) {
            assert_eq!(g["n_tokens"], want["n_tokens"]);
            assert_eq!(
                g["token_logps"].as_array().unwrap().len(),
                want["n_tokens"].as_u64().unwrap() as usize
            );
            let (g, w) = (g["logp"].as_f64().unwrap(), want["logp"].as_f64().unwrap());
            assert!(
                (g - w).abs() < tolerance,
                "{dtype}: logp {g} vs transformers {w}"
            );
            worst = worst.max((g - w).abs());
        }
        assert!(
            dtype == "f32" || worst > 1e-5,
            "{dtype}: nothing was rounded"
        );
        std::fs::remove_file(&output).unwrap();
    }
}

#[test]
fn score_reports_bad_line_with_file_and_number() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\"}\n",
    )
    .unwrap();
    let model = fixture("qwen2");
    let out = clo(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("in.jsonl:2:") && err.contains("prompt_ids"),
        "{err}"
    );
    assert!(!output.exists(), "nothing is written when the input is bad");
}

#[test]
fn generate_greedy_prints_transformers_continuation() {
    let exp = expected("qwen2");
    let case = &exp["greedy"][0];
    let model = fixture("qwen2");
    let out = clo(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<u64> = got["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    if got["stop"] == "eos" {
        ids.push(exp_eos(&model));
    }
    let want: Vec<u64> = case["new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, want);
}

fn exp_eos(model: &Path) -> u64 {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["eos_token_id"].as_u64().unwrap()
}

#[test]
fn generate_with_seed_is_reproducible_and_seed_matters() {
    let model = fixture("llama");
    let run = |seed: &str| {
        let out = clo(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Habari",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-new-tokens",
            "16",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["ids"].clone()
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

#[test]
fn inspect_reports_architecture() {
    let model = fixture("mistral");
    let out = clo(&["inspect", "--model", model.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model_type"], "mistral");
    assert_eq!(v["num_parameters"], expected("mistral")["num_parameters"]);
    assert_eq!(v["checkpoint_dtypes"], serde_json::json!(["F16"]));
    assert_eq!(v["head_dim"], 24);
    assert_eq!(v["sliding_windows"], serde_json::json!([7, 7]));
    let text = clo(&["inspect", "--model", model.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("parameters:") && text.contains("F16"),
        "{text}"
    );
}

#[test]
fn missing_model_dir_fails_clearly() {
    let out = clo(&["inspect", "--model", "/nonexistent/model"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/model") && err.contains("HINT"),
        "{err}"
    );
}

/// `clo inspect` names the file the chat template came from (transformers 5 keeps it in
/// chat_template.jinja); `--chat-template` on a base model without one warns on stderr.
#[test]
fn template_source_is_named_and_a_missing_template_is_said() {
    let t5 = fixture("llama-t5");
    let out = clo(&["inspect", "--model", t5.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("chat template from") && text.contains("chat_template.jinja"),
        "{text}"
    );
    let v: Value = serde_json::from_slice(
        &clo(&["inspect", "--model", t5.to_str().unwrap(), "--json"]).stdout,
    )
    .unwrap();
    assert!(
        v["chat_template_file"]
            .as_str()
            .unwrap()
            .ends_with("chat_template.jinja")
    );

    let chat_stderr = |model: &Path| {
        let out = clo(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Hi",
            "--chat-template",
            "--temperature",
            "0",
            "--max-new-tokens",
            "2",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let err = chat_stderr(&fixture("llama"));
    assert!(
        err.contains("warning: --chat-template was given but") && err.contains("plain fallback"),
        "{err}"
    );
    let err = chat_stderr(&t5);
    assert!(!err.contains("warning: --chat-template"), "{err}");
}

/// `clo train --help` shows clo-core's help of each run setting (the text the web form shows)
/// with `RunConfig::default()`'s default.
#[test]
fn train_help_is_the_shared_settings_help() {
    use clo_core::train::config::{SETTINGS, setting_help};
    let out = clo(&["train", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for s in SETTINGS
        .iter()
        .filter(|s| s.key != "shuffle" && s.key != "nll_reduction")
    {
        assert!(help.contains(setting_help(s.key)), "{}: {help}", s.key);
    }
    assert!(
        help.contains("[default: 8]") && help.contains("[default: attention]"),
        "{help}"
    );
}

/// A PEFT adapter written by peft itself, on the command line: `--adapter` on `clo score` and
/// `clo generate`, the adapter directory as `--model`, and `clo export --model --adapter` to a
/// merged directory and to GGUF: all give the same log-probs, unlike the base model.
#[test]
fn a_peft_adapter_scores_generates_and_exports() {
    let base = fixture("qwen2");
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peft/rslora-mlp");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt_ids\": [5, 17, 42], \"response_ids\": [7, 99, 3, 250]}\n{\"prompt_ids\": [1, 64], \"response_ids\": [64, 12, 300]}\n",
    )
    .unwrap();
    let score = |model_args: &[&str]| -> Vec<f64> {
        let output = dir.path().join("out.jsonl");
        let mut args = vec!["score"];
        args.extend_from_slice(model_args);
        args.extend_from_slice(&[
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        let out = clo(&args);
        assert!(out.status.success(), "{model_args:?}: {}", stderr(&out));
        std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .flat_map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["token_logps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (b, a) = (base.to_str().unwrap(), adapter.to_str().unwrap());
    let plain = score(&["--model", b]);
    let adapted = score(&["--model", b, "--adapter", a]);
    let diff = |x: &[f64], y: &[f64]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    };
    assert!(
        diff(&plain, &adapted) > 1e-2,
        "the adapter changes the log-probs"
    );
    assert!(
        diff(&score(&["--model", a]), &adapted) < 1e-6,
        "the adapter directory as --model"
    );

    let merged = dir.path().join("merged");
    let out = clo(&[
        "export",
        "--model",
        b,
        "--adapter",
        a,
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        diff(&score(&["--model", merged.to_str().unwrap()]), &adapted) < 1e-5,
        "merged export"
    );
    let gguf = dir.path().join("adapted.gguf");
    let out = clo(&[
        "export",
        "--model",
        a,
        "--gguf",
        gguf.to_str().unwrap(),
        "--quant",
        "f32",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        diff(&score(&["--model", gguf.to_str().unwrap()]), &adapted) < 1e-4,
        "GGUF export"
    );
    // An existing directory that clo export did not write is refused.
    let out = clo(&[
        "export",
        "--model",
        b,
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());

    let out = clo(&[
        "generate",
        "--model",
        b,
        "--adapter",
        a,
        "--prompt",
        "hello",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let missing = clo(&[
        "generate",
        "--model",
        b,
        "--adapter",
        dir.path().to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(
        stderr(&missing).contains("adapter_config.json"),
        "{}",
        stderr(&missing)
    );
}

/// `clo devices` lists the CPU and each adapter with the `--device` value that selects it, as a
/// table and as JSON, and each listed value works as `--device`.
#[test]
fn devices_lists_what_device_takes() {
    let out = clo(&["devices", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["spec"], "cpu");
    let table = clo(&["devices"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("--device"), "{text}");
    let model = fixture("qwen2");
    for d in &list {
        let spec = d["spec"].as_str().unwrap();
        assert!(text.contains(spec), "{text}");
        let g = clo(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
            "--device",
            spec,
        ]);
        assert!(g.status.success(), "{spec}: {}", stderr(&g));
    }
}
