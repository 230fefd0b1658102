//! `clo train` and `clo export` as a user runs them: a run killed with SIGKILL resumes to the
//! same weights as an uninterrupted one; bad input and misuse get clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn clo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(args)
        .output()
        .expect("clo runs")
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "clo failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: Output) -> String {
    assert!(!out.status.success(), "clo should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn train_args(out: &Path, cache: &Path, steps: &str) -> Vec<String> {
    let model = root().join("models/qwen2");
    let data = root().join("data/quads.jsonl");
    [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--method",
        "clo",
        "--trainable",
        "attention",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--save-every",
        "5",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(train_args(&a, &cache, "80"))
        .output()
        .unwrap());

    // Start the same run, SIGKILL it as soon as its second checkpoint is on disk.
    let mut child = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(train_args(&b, &cache, "80"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !b.join("checkpoints/step-00000010").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("summary.json").exists(),
        "the run must have been cut short"
    );
    let cut = lines(&b.join("metrics.jsonl")).len();
    assert!(cut < 80, "killed after {cut} steps");
    // What a writer killed mid-write leaves (temporaries named after a dead process) goes on
    // resume.
    let leftovers = [
        b.join("checkpoints/.step-00000099.tmp999999999"),
        b.join(".best.tmp999999998"),
    ];
    for l in &leftovers {
        std::fs::create_dir_all(l.join("x")).unwrap();
    }

    let mut resume = train_args(&b, &cache, "80");
    resume.push("--resume".into());
    let resumed_at = Instant::now();
    let stdout = ok(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(&resume)
        .output()
        .unwrap());
    let resume_s = resumed_at.elapsed().as_secs_f64();
    assert!(stdout.contains("80 steps"), "{stdout}");
    for l in &leftovers {
        assert!(!l.exists(), "{} left behind", l.display());
    }

    // Same metrics (every step exactly once) and the same final weights, bit for bit.
    let (ma, mb) = (
        lines(&a.join("metrics.jsonl")),
        lines(&b.join("metrics.jsonl")),
    );
    assert_eq!(ma.len(), 80);
    assert_eq!(mb.len(), 80);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
        assert_eq!(x["grad_norm"], y["grad_norm"], "step {}", x["step"]);
    }
    // The summary covers the whole run, not the resumed segment.
    let summary = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
    };
    let (sa, sb) = (summary(&a), summary(&b));
    assert_eq!(sb["first_loss"], mb[0]["loss"], "{sb}");
    assert_eq!(sa["first_loss"], sb["first_loss"]);
    assert_eq!(sb["steps"], 80);
    // Wall time adds the killed segment's (up to its checkpoint) to the resumed one's, so it
    // exceeds the resuming process's own lifetime.
    let wall = sb["wall_s"].as_f64().unwrap();
    assert!(
        wall > resume_s,
        "wall time of the whole run {wall} s, the resume alone took {resume_s} s"
    );
    let (ea, eb) = (dir.path().join("ea"), dir.path().join("eb"));
    for (run, out) in [(&a, &ea), (&b, &eb)] {
        ok(clo(&[
            "export",
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--merged",
            "--from",
            "last",
        ]));
    }
    let (ta, tb) = (
        tensors(&ea.join("model.safetensors")),
        tensors(&eb.join("model.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    assert!(
        ta == tb,
        "resumed weights differ from the uninterrupted run's"
    );
}

#[test]
fn train_refuses_bad_data_reused_dirs_and_changed_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let bad = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(root().join("data/quads.jsonl")).unwrap();
    let mut text: Vec<String> = good.lines().map(String::from).collect();
    text[2] = text[2].replace("\"y_tgt\"", "\"y_target\"");
    std::fs::write(&bad, text.join("\n")).unwrap();
    let out = dir.path().join("run");
    let mut args = train_args(&out, &cache, "2");
    let i = args.iter().position(|a| a == "--data").unwrap();
    args[i + 1] = bad.to_str().unwrap().into();
    let msg = err(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(&args)
        .output()
        .unwrap());
    assert!(msg.contains("bad.jsonl:3: missing field `y_tgt`"), "{msg}");
    assert!(!out.join("checkpoints").exists(), "nothing trained");

    ok(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(train_args(&out, &cache, "2"))
        .output()
        .unwrap());
    let again = err(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(train_args(&out, &cache, "2"))
        .output()
        .unwrap());
    assert!(
        again.contains("already holds a run") && again.contains("--resume"),
        "{again}"
    );

    let mut changed = train_args(&out, &cache, "2");
    let i = changed.iter().position(|a| a == "--lr").unwrap();
    changed[i + 1] = "5e-4".into();
    changed.push("--resume".into());
    let msg = err(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(&changed)
        .output()
        .unwrap());
    assert!(
        msg.contains("config.toml") && msg.contains("differ"),
        "{msg}"
    );

    let peft = err(clo(&[
        "export",
        "--run",
        out.to_str().unwrap(),
        "--out",
        dir.path().join("p").to_str().unwrap(),
        "--peft",
    ]));
    assert!(peft.contains("needs a LoRA run"), "{peft}");

    let mut bad_method = train_args(&dir.path().join("x"), &cache, "2");
    let i = bad_method.iter().position(|a| a == "--method").unwrap();
    bad_method[i + 1] = "ppo".into();
    let msg = err(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(&bad_method)
        .output()
        .unwrap());
    assert!(
        msg.contains("'ppo' for '--method")
            && msg.contains("choose one of")
            && msg.contains("sft+dpo"),
        "{msg}"
    );
}

#[test]
fn config_file_sets_values_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("run.toml");
    std::fs::write(&toml, "lambda = 0.25\nbeta = 0.2\nlr = 2e-3\n").unwrap();
    let out = dir.path().join("run");
    let mut args = train_args(&out, &dir.path().join("cache"), "2");
    args.extend(["--config".into(), toml.to_str().unwrap().into()]);
    ok(Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(&args)
        .output()
        .unwrap());
    let saved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(saved.contains("lambda = 0.25"), "{saved}");
    assert!(saved.contains("beta = 0.2"), "{saved}");
    assert!(
        saved.contains("lr = 0.001"),
        "--lr overrides the file: {saved}"
    );
    assert!(saved.contains("method = \"clo\""), "{saved}");
}

/// GGUF as a user meets it: a run exported with `--gguf` is a model `clo inspect`, `clo train`
/// and `clo generate` accept; a run trained from that GGUF exports to a Hugging Face directory
/// with tokenizer files; bad `--quant` and `--gguf-lora` on a non-LoRA run are refused.
#[test]
fn gguf_export_is_a_model_clo_trains_on_and_exports_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    ok(clo(&train_args(&run, &cache, "2")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()));
    let gguf = dir.path().join("adapted.gguf");
    let said = ok(clo(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--gguf",
        gguf.to_str().unwrap(),
        "--quant",
        "q8_0",
    ]));
    assert!(said.contains("GGUF, q8_0"), "{said}");
    let inspect = ok(clo(&["inspect", "--model", gguf.to_str().unwrap()]));
    assert!(
        inspect.contains("model_type:   qwen2") && inspect.contains("Q8_0"),
        "{inspect}"
    );
    assert!(inspect.contains("chat template from"), "{inspect}");

    let mut args = train_args(&dir.path().join("run2"), &cache, "2");
    let i = args.iter().position(|a| a == "--model").unwrap();
    args[i + 1] = gguf.to_str().unwrap().into();
    ok(clo(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let merged = dir.path().join("merged");
    ok(clo(&[
        "export",
        "--run",
        dir.path().join("run2").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
    ] {
        assert!(merged.join(f).is_file(), "{f}");
    }
    let prompt_ids = |model: &Path| {
        let out = ok(clo(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Habari?",
            "--chat-template",
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
            "--json",
        ]));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["prompt_ids"].clone()
    };
    assert_eq!(
        prompt_ids(&merged),
        prompt_ids(&gguf),
        "same tokenizer and template"
    );

    let bad = err(clo(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--gguf",
        gguf.to_str().unwrap(),
        "--quant",
        "q5_k",
    ]));
    assert!(
        bad.contains("--quant q5_k") && bad.contains("q4_0"),
        "{bad}"
    );
    let lora = err(clo(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--gguf-lora",
        dir.path().join("l.gguf").to_str().unwrap(),
    ]));
    assert!(lora.contains("needs a LoRA run"), "{lora}");
    // A file clo did not write is not replaced.
    let foreign = dir.path().join("notes.gguf");
    std::fs::write(&foreign, "mine").unwrap();
    let refused = err(clo(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--gguf",
        foreign.to_str().unwrap(),
    ]));
    assert!(
        refused.contains("was not written by clo export"),
        "{refused}"
    );
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "mine");
}

/// `--logp-chunk` and `--attention` are run settings (saved in config.toml) that change no
/// loss: a run with the log-probs 3 positions at a time, and one with materialised attention,
/// log the plain (memory-efficient attention) run's losses.
#[test]
fn logp_chunk_and_attention_change_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = train_args(&out, &cache, "3");
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(clo(&args));
        (
            lines(&out.join("metrics.jsonl")),
            std::fs::read_to_string(out.join("config.toml")).unwrap(),
        )
    };
    let (plain, _) = run("plain", &[]);
    let (chunked, config) = run("chunked", &["--logp-chunk", "3"]);
    assert!(config.contains("logp_chunk = 3"), "{config}");
    let (materialized, config) = run("materialized", &["--attention", "materialized"]);
    assert!(config.contains("attention = \"materialized\""), "{config}");
    assert_eq!(plain.len(), 3);
    for other in [&chunked, &materialized] {
        for (a, b) in plain.iter().zip(other) {
            let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
