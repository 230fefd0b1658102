//! Nothing lost, nothing crashes: each finding of the reliability probe, reproduced the way it
//! was found (the built binary, run as a user runs it), now refused with a clear error and exit
//! code 1, with the data still there.

mod common;
use common::{fixtures, refused, s, stderr};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn clo_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clo"));
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("clo runs")
}

fn clo(args: &[&str]) -> Output {
    clo_env(args, &[])
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "clo failed:\n{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn train_args<'a>(out: &'a Path, cache: &'a Path, steps: &'a str) -> Vec<String> {
    let model = fixtures().join("models/qwen2");
    let data = fixtures().join("data/quads.jsonl");
    [
        "train",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--method",
        "clo",
        "--out",
        s(out),
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--save-every",
        "2",
        "--cache-dir",
        s(cache),
    ]
    .map(String::from)
    .to_vec()
}

fn train(out: &Path, cache: &Path, steps: &str) -> Output {
    let args = train_args(out, cache, steps);
    clo(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Finding 2: `clo export --out DIR` deleted whatever was there, the run itself included.
#[test]
fn export_never_destroys_what_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let (run, cache) = (dir.path().join("run"), dir.path().join("cache"));
    ok(&train(&run, &cache, "2"));
    let export = |out: &Path, force: bool| {
        let mut args = vec!["export", "--run", s(&run), "--out", s(out)];
        if force {
            args.push("--force");
        }
        clo(&args)
    };

    // A directory of the user's: refused, untouched.
    let thesis = dir.path().join("x");
    std::fs::create_dir(&thesis).unwrap();
    std::fs::write(thesis.join("t.txt"), "thesis").unwrap();
    let msg = refused(&export(&thesis, false));
    assert!(
        msg.contains("not written by clo export") && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(thesis.join("t.txt")).unwrap(),
        "thesis"
    );

    // The run itself, and a directory inside it: refused even with --force.
    let before: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    for target in [run.clone(), run.join("best"), run.join("exported")] {
        let msg = refused(&export(&target, true));
        assert!(msg.contains("training run"), "{msg}");
    }
    let after: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "the run directory changed");
    assert!(run.join("best/trainable.bpk").is_file() || run.join("checkpoints").is_dir());
    assert!(std::fs::metadata(run.join("metrics.jsonl")).unwrap().len() > 0);

    // A file: refused, still a file.
    let file = dir.path().join("notes.md");
    std::fs::write(&file, "notes").unwrap();
    refused(&export(&file, false));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "notes");

    // A fresh directory, then the same one again (clo export's own output): replaced.
    let model = dir.path().join("model");
    ok(&export(&model, false));
    ok(&export(&model, false));
    assert!(model.join("model.safetensors").is_file());

    // --force moves the user's directory aside, whole, and exports.
    ok(&export(&thesis, true));
    assert!(thesis.join("model.safetensors").is_file());
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("x.replaced-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(aside[0].join("t.txt")).unwrap(),
        "thesis"
    );

    // A killed export's temporary beside the output is removed by the next export.
    let stale = dir.path().join(".model.tmp999999999");
    std::fs::create_dir_all(stale.join("part")).unwrap();
    ok(&export(&model, false));
    assert!(!stale.exists());
}

/// Finding 3: two writers of one run directory both ran, every step twice in metrics.jsonl.
#[test]
fn a_second_writer_of_a_run_is_refused_with_the_pid_and_a_killed_ones_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let (run, cache) = (dir.path().join("run"), dir.path().join("cache"));
    let mut first = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(train_args(&run, &cache, "400"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !run.join("checkpoints/step-00000002").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = first.id().to_string();

    let mut resume = train_args(&run, &cache, "400");
    resume.push("--resume".into());
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    for out in [train(&run, &cache, "400"), clo(&resume)] {
        let msg = refused(&out);
        assert!(msg.contains(&format!("in use by process {pid}")), "{msg}");
    }

    first.kill().unwrap();
    first.wait().unwrap();
    let steps = |run: &Path| {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            // A line cut by the kill is not a step.
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["step"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let cut = steps(&run).len();
    assert!(cut < 400, "the first run was not cut short");

    // The killed process's lock does not block a resume; every step is logged once.
    let mut resume = train_args(&run, &cache, "400");
    resume.push("--resume".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(&resume)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while steps(&run).len() <= cut + 2 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the resume stopped early: {status:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the resume made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let logged = steps(&run);
    let expected: Vec<u64> = (0..logged.len() as u64).collect();
    assert_eq!(logged, expected, "each step once, in order");
}

/// Finding 3, the other half: a directory of the user's is not a run to write into.
#[test]
fn train_refuses_a_directory_of_other_files_and_force_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("thesis.tex"), "\\begin{document}").unwrap();
    let msg = refused(&train(&out, &cache, "2"));
    assert!(msg.contains("not written by clo train"), "{msg}");
    assert!(!out.join("config.toml").exists());

    // A run inside another run is refused too.
    let run = dir.path().join("run");
    ok(&train(&run, &cache, "2"));
    let msg = refused(&train(&run.join("nested"), &cache, "2"));
    assert!(msg.contains("inside the training run"), "{msg}");

    // --force starts afresh and keeps the old contents aside.
    let mut args = train_args(&run, &cache, "2");
    args.push("--force".into());
    ok(&clo(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("run.replaced-"))
        .expect("the old run moved aside")
        .path();
    assert!(aside.join("metrics.jsonl").is_file());
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

/// Finding 1: prompts and lines beyond any limit were loaded and run until memory ran out.
#[test]
fn prompts_beyond_the_context_and_overlong_lines_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/qwen2");
    let context: usize = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(model.join("config.json")).unwrap(),
    )
    .unwrap()["max_position_embeddings"]
        .as_u64()
        .unwrap() as usize;
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let ids = |n: usize| {
        (0..n)
            .map(|i| (i % 50 + 3).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    std::fs::write(
        &input,
        format!(
            "{{\"prompt_ids\": [5, 6], \"response_ids\": [7]}}\n{{\"prompt_ids\": [{}], \"response_ids\": [{}]}}\n",
            ids(context - 10),
            ids(20)
        ),
    )
    .unwrap();
    let score = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "score",
            "--model",
            s(&model),
            "--input",
            s(&input),
            "--output",
            s(&output),
        ];
        args.extend_from_slice(extra);
        clo_env(&args, env)
    };
    let msg = refused(&score(&[], &[]));
    assert!(
        msg.contains("in.jsonl:2: prompt and response")
            && msg.contains(&format!(
                "{} tokens exceed the limit of {context}",
                context + 10
            )),
        "{msg}"
    );
    assert!(!output.exists(), "nothing written");

    let msg = refused(&score(&["--max-prompt-tokens", "10"], &[]));
    assert!(
        msg.contains("in.jsonl:2") && msg.contains("max_prompt_tokens is 10"),
        "{msg}"
    );

    // A line longer than the configured limit is refused by line, not read whole.
    let msg = refused(&score(&[], &[("CLO_MAX_LINE_BYTES", "200")]));
    assert!(
        msg.contains("in.jsonl:2") && msg.contains("longer than 200 bytes"),
        "{msg}"
    );

    // Training and eval data, too, and bytes that are not UTF-8 get their line.
    let quads = dir.path().join("quads.jsonl");
    let mut bytes = std::fs::read(fixtures().join("data/quads.jsonl")).unwrap();
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend(b"{\"id\": \"x\", \"x_en\": \"\xff\"}\n");
    std::fs::write(&quads, &bytes).unwrap();
    let line = bytes.iter().filter(|b| **b == b'\n').count();
    let mut args = train_args(&dir.path().join("run"), &dir.path().join("cache"), "2");
    let i = args.iter().position(|a| a == "--data").unwrap();
    args[i + 1] = s(&quads).into();
    let msg = refused(&clo(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(
        msg.contains(&format!("quads.jsonl:{line}")) && msg.contains("UTF-8"),
        "{msg}"
    );

    // generate: a prompt that fills the context is refused; --max-new-tokens is capped.
    let long_prompt = "a b c d ".repeat(context);
    let msg = refused(&clo(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        &long_prompt,
    ]));
    assert!(msg.contains("tokens exceed the limit of"), "{msg}");
    let out = ok(&clo(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "100000",
        "--temperature",
        "1",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let total = v["ids"].as_array().unwrap().len() + v["prompt_ids"].as_array().unwrap().len();
    assert!(total <= context, "{total} tokens in a context of {context}");
}

/// Findings 4 and 6, and the rule behind them: bad values at the CLI are errors (exit 1) with
/// a message, never a panic (101) or an abort (134).
#[test]
fn bad_values_are_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/qwen2");
    let m = s(&model);
    let quads = fixtures().join("data/quads.jsonl");
    let q = s(&quads);
    let run = dir.path().join("run");
    let r = s(&run);
    let out = dir.path().join("out");
    let o = s(&out);
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\", \"lang\": \"en\"}\n").unwrap();
    let p = s(&prompts);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "x",
                "--temperature",
                "NaN",
            ],
            "temperature NaN",
        ),
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "x",
                "--temperature=-1",
            ],
            "temperature",
        ),
        (
            vec!["generate", "--model", m, "--prompt", "x", "--top-p", "0"],
            "top_p",
        ),
        (
            vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "x",
                "--max-new-tokens",
                "0",
            ],
            "max_new_tokens",
        ),
        (
            vec![
                "generate", "--model", m, "--prompt", "x", "--device", "wgpu:7",
            ],
            "adapters found",
        ),
        (
            vec!["generate", "--model", m, "--prompt", "x", "--device", "tpu"],
            "unknown device",
        ),
        (
            vec![
                "score", "--model", m, "--input", q, "--output", o, "--device", "wgpu:7",
            ],
            "adapters found",
        ),
        (
            vec![
                "score",
                "--model",
                m,
                "--input",
                q,
                "--output",
                o,
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--data",
                q,
                "--out",
                r,
                "--weight-decay=-1",
            ],
            "weight_decay",
        ),
        (
            vec![
                "train", "--model", m, "--data", q, "--out", r, "--lr", "NaN",
            ],
            "lr",
        ),
        (
            vec![
                "train", "--model", m, "--data", q, "--out", r, "--lambda", "2",
            ],
            "lambda",
        ),
        (
            vec![
                "train", "--model", m, "--data", q, "--out", r, "--layers", "0,99",
            ],
            "layers",
        ),
        (
            vec![
                "train", "--model", m, "--data", q, "--out", r, "--layers", "3,1",
            ],
            "layers",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--data",
                q,
                "--out",
                r,
                "--batch-size",
                "0",
            ],
            "batch_size",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--data",
                q,
                "--out",
                r,
                "--lora-alpha",
                "NaN",
                "--trainable",
                "lora",
            ],
            "lora_alpha",
        ),
        (
            vec![
                "train", "--model", m, "--data", q, "--out", r, "--device", "wgpu:7",
            ],
            "adapters found",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--data",
                "/nonexistent/q.jsonl",
                "--out",
                r,
            ],
            "check the path",
        ),
        (
            vec!["train", "--model", m, "--data", "/", "--out", r],
            "Is a directory",
        ),
        (
            vec![
                "eval",
                "mc",
                "--model",
                m,
                "--tasks",
                q,
                "--out",
                o,
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            vec![
                "eval",
                "gen",
                "--model",
                m,
                "--prompts",
                p,
                "--out",
                o,
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            vec![
                "eval",
                "gen",
                "--model",
                m,
                "--prompts",
                p,
                "--out",
                o,
                "--temperature",
                "NaN",
            ],
            "temperature",
        ),
        (
            vec!["export", "--run", "/nonexistent/run", "--out", o],
            "no such run",
        ),
        (
            vec!["serve", "--host", "0.0.0.0", "--token", "", "--workdir", o],
            "--token",
        ),
        (vec!["serve", "--token", " ", "--workdir", o], "--token"),
        (
            vec!["serve", "--device", "wgpu:7", "--workdir", o],
            "adapters found",
        ),
        (
            vec!["serve", "--max-generations", "0", "--workdir", o],
            "--max-generations",
        ),
        (
            vec![
                "train",
                "--model",
                m,
                "--data",
                q,
                "--out",
                r,
                "--batch-size=-3",
            ],
            "invalid value",
        ),
        (vec!["generate", "--model", m], "--prompt"),
    ];
    for (args, expect) in &cases {
        let msg = refused(&clo(args));
        assert!(
            msg.contains(expect),
            "clo {}: expected {expect:?} in:\n{msg}",
            args.join(" ")
        );
        assert_eq!(
            msg.matches("(os error").count().min(1),
            msg.matches("(os error").count(),
            "an OS error printed twice: {msg}"
        );
    }
    assert!(!run.join("checkpoints").exists(), "no refused run trained");
}
