//! `clo prepare` against a real OpenAI-compatible HTTP server on loopback that translates
//! deterministically into pseudo-Swahili (each English word becomes a Swahili word chosen by a
//! hash), with markers that make it misbehave: `COPYME` returns the source, `EMPTYME` nothing,
//! `ENGLISHME` English, `LONGME` ten times too much.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/prepare")
}

const SW: [&str; 16] = [
    "habari", "mimi", "wewe", "kitabu", "nyumba", "chakula", "maji", "watoto", "shule", "rafiki",
    "sana", "leo", "jana", "kesho", "mzuri", "kubwa",
];

fn pseudo_sw(text: &str) -> String {
    if text.contains("COPYME") {
        return text.to_string();
    }
    if text.contains("EMPTYME") {
        return String::new();
    }
    if text.contains("ENGLISHME") {
        return "This answer stays in plain English words only".into();
    }
    let words: Vec<&str> = text
        .split_whitespace()
        .map(|w| {
            let h = w
                .bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
            SW[h as usize % SW.len()]
        })
        .collect();
    let out = words.join(" ");
    if text.contains("LONGME") {
        vec![out; 10].join(" ")
    } else {
        out
    }
}

struct Server {
    base: String,
    served: Arc<AtomicUsize>,
    system_prompts: Arc<Mutex<Vec<String>>>,
}

/// `fail_first`: how many first requests get 500 then 429 alternately.
fn start_server(delay_ms: u64, fail_first: usize) -> Server {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", server.server_addr().to_ip().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let system_prompts = Arc::new(Mutex::new(Vec::new()));
    let (count, prompts) = (served.clone(), system_prompts.clone());
    std::thread::spawn(move || {
        for (n, mut req) in server.incoming_requests().enumerate() {
            let mut body = String::new();
            std::io::Read::read_to_string(req.as_reader(), &mut body).unwrap();
            let json: Value = serde_json::from_str(&body).unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let status = if n < fail_first {
                if n % 2 == 0 { 500 } else { 429 }
            } else {
                200
            };
            let text = json["messages"][1]["content"].as_str().unwrap();
            if status == 200 {
                prompts
                    .lock()
                    .unwrap()
                    .push(json["messages"][0]["content"].as_str().unwrap().to_string());
            }
            let reply = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": pseudo_sw(text)}}]});
            let _ = req.respond(
                tiny_http::Response::from_string(reply.to_string()).with_status_code(status),
            );
            if status == 200 {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Server {
        base,
        served,
        system_prompts,
    }
}

fn prepare_cmd(input: &Path, out: &Path, translator: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clo"));
    c.arg("prepare")
        .arg("--input")
        .arg(input)
        .args(["--target", "sw", "--translator", translator])
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_format_becomes_checked_quadruples() {
    let server = start_server(0, 2);
    let spec = format!("openai:{}#translator", server.base);
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[(&str, &str)]); 5] = [
        (
            "oasst_trees.jsonl",
            &[
                (
                    "How do plants make their food?",
                    "Plants make food from sunlight, water and air through photosynthesis.",
                ),
                (
                    "Name three colors of the rainbow.",
                    "Red, orange and yellow are three colors of the rainbow.",
                ),
            ],
        ),
        (
            "oasst_messages.jsonl",
            &[(
                "Why is the sea salty?",
                "Rivers carry dissolved minerals from rocks into the sea, and evaporation leaves the salt behind.",
            )],
        ),
        (
            "alpaca.json",
            &[
                (
                    "Give a synonym for happy.",
                    "A synonym for happy is joyful.",
                ),
                (
                    "Summarize the sentence.\n\nThe quick brown fox jumps over the lazy dog near the river bank.",
                    "A fox jumps over a dog by the river.",
                ),
            ],
        ),
        (
            "sharegpt.jsonl",
            &[
                (
                    "What is the boiling point of water?",
                    "Water boils at one hundred degrees Celsius at sea level.",
                ),
                (
                    "Tell me a short fact about the moon.",
                    "The moon has no atmosphere to speak of, so its sky looks black.",
                ),
            ],
        ),
        (
            "pairs.jsonl",
            &[
                (
                    "Say hello to my friend.",
                    "Hello to your friend, with warm wishes.",
                ),
                (
                    "Name a large animal of Africa.",
                    "The elephant is a large animal of Africa.",
                ),
            ],
        ),
    ];
    for (file, want) in cases {
        let out = dir.path().join(file.replace(".json", "-quads.json"));
        let out = out.with_extension("jsonl");
        ok(&prepare_cmd(
            &fixtures().join(file),
            &out,
            &spec,
            &["--concurrency", "2", "--val-fraction", "0"],
        )
        .output()
        .unwrap());
        let quads = read_jsonl(&out);
        let got: Vec<(&str, &str)> = quads
            .iter()
            .map(|q| (q["x_en"].as_str().unwrap(), q["y_en"].as_str().unwrap()))
            .collect();
        assert_eq!(got, want, "{file}");
        for q in &quads {
            assert_eq!(q["x_tgt"], pseudo_sw(q["x_en"].as_str().unwrap()));
            assert_eq!(q["y_tgt"], pseudo_sw(q["y_en"].as_str().unwrap()));
            assert_eq!(
                (
                    q["lang"].as_str(),
                    q["src_lang"].as_str(),
                    q["tgt_lang"].as_str()
                ),
                (Some("sw"), Some("en"), Some("sw"))
            );
            assert_eq!(q["translator"], spec.as_str());
            assert_eq!(q["id"], q["source_id"]);
        }
        // The trainer reads the output as it is.
        clo_core::train::data::read_quadruples(&out).unwrap();
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(out.with_extension("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(summary["kept"], want.len(), "{file}");
        assert_eq!(summary["language_check"], true);
    }
    // The translation prompt names the languages.
    assert!(
        server
            .system_prompts
            .lock()
            .unwrap()
            .iter()
            .all(|p| p.contains("from English into Swahili"))
    );

    // The pairs file holds four bad translations: each dropped with its reason and counted.
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("pairs-quads.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["rejected"], 4);
    for kind in ["unchanged", "language", "empty", "length"] {
        assert_eq!(summary["rejected_by"][kind], 1, "{summary}");
    }
    let rejected = read_jsonl(&dir.path().join("pairs-quads.rejected.jsonl"));
    let ids: Vec<&str> = rejected
        .iter()
        .map(|r| r["source_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b", "c", "d", "e"]);
    assert!(
        rejected[1]["reason"]
            .as_str()
            .unwrap()
            .contains("identified as `en`")
    );
    // OASST: non-English prompts and unanswered prompts are counted.
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("oasst_messages-quads.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            summary["ingest"]["not_english"].as_u64(),
            summary["ingest"]["no_reply"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

fn many_pairs(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("many.jsonl");
    let text: String = (0..n)
        .map(|i| format!("{}\n", serde_json::json!({"id": format!("p{i}"), "prompt": format!("Question number {i} about the river and the sky"), "response": format!("Answer number {i} says the river is long and the sky is wide")})))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn journal_records(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .count()
        .saturating_sub(1)
}

/// SIGKILL mid-run, rerun: nothing translated twice, nothing lost or duplicated, and the outputs
/// equal an uninterrupted run's (with subsets and split).
#[test]
fn killed_prepare_resumes_exactly() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let input = many_pairs(dir.path(), N);
    let args = [
        "--concurrency",
        "2",
        "--subsets",
        "5,10,20",
        "--val-fraction",
        "0.2",
    ];

    let reference = start_server(0, 0);
    let want = dir.path().join("ref/quads.jsonl");
    ok(&prepare_cmd(
        &input,
        &want,
        &format!("openai:{}#t", reference.base),
        &args,
    )
    .output()
    .unwrap());
    assert_eq!(reference.served.load(Ordering::SeqCst), 2 * N);

    let slow = start_server(25, 0);
    let out = dir.path().join("run/quads.jsonl");
    let spec = format!("openai:{}#t", slow.base);
    let mut child = prepare_cmd(&input, &out, &spec, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = out.with_extension("journal.jsonl");
    let t0 = std::time::Instant::now();
    while journal_records(&journal) < 8 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Let the server finish the requests the killed process left in flight before counting.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!out.exists(), "outputs are written only at the end");
    let done = journal_records(&journal);
    assert!(done < N, "killed too late to test anything");

    let resumed = start_server(0, 0);
    let spec2 = format!("openai:{}#t", resumed.base);
    // Same settings are required to resume; the translator's address differs here, so the
    // journal must be refused rather than mixed.
    let refused = prepare_cmd(&input, &out, &spec2, &args).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("other settings"));
    // The same settings: resume against the same (still running) server.
    let before = slow.served.load(Ordering::SeqCst);
    ok(&prepare_cmd(&input, &out, &spec, &args).output().unwrap());
    let after = slow.served.load(Ordering::SeqCst);
    assert_eq!(
        after - before,
        2 * (N - done),
        "records in the journal are not translated again"
    );
    for suffix in [
        "jsonl",
        "train.jsonl",
        "val.jsonl",
        "subset-5.jsonl",
        "subset-10.jsonl",
        "subset-20.jsonl",
    ] {
        // The runs used different servers: compare with the translator's address masked.
        let a = std::fs::read_to_string(want.with_extension(suffix))
            .unwrap()
            .replace(&reference.base, "URL");
        let b = std::fs::read_to_string(out.with_extension(suffix))
            .unwrap()
            .replace(&slow.base, "URL");
        assert!(a == b, "{suffix} differs from the uninterrupted run's");
    }
    let all = read_jsonl(&out);
    assert_eq!(all.len(), N);
    let train = read_jsonl(&out.with_extension("train.jsonl"));
    let val = read_jsonl(&out.with_extension("val.jsonl"));
    assert_eq!(train.len() + val.len(), N);
    assert!(!val.is_empty() && val.len() < N / 2, "{}", val.len());
    // Subsets are nested prefixes drawn from train.
    let s10 = read_jsonl(&out.with_extension("subset-10.jsonl"));
    let s20 = read_jsonl(&out.with_extension("subset-20.jsonl"));
    assert_eq!(&s20[..10], &s10[..]);
    assert!(s20.iter().all(|q| train.contains(q)));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["translated_now"], N - done);
}

fn fails_with(input_text: &[u8], extra: &[&str], expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, input_text).unwrap();
    let out = dir.path().join("q.jsonl");
    let translator = match extra.iter().position(|a| *a == "--translator") {
        Some(i) => extra[i + 1],
        None => "columns",
    };
    let extra: Vec<&str> = match extra.iter().position(|a| *a == "--translator") {
        Some(i) => [&extra[..i], &extra[i + 2..]].concat(),
        None => extra.to_vec(),
    };
    let run = prepare_cmd(&input, &out, translator, &extra)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    for e in expect {
        assert!(err.contains(e), "expected `{e}` in: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from("in.jsonl")],
        "nothing half-written"
    );
}

#[test]
fn bad_input_is_refused_clearly() {
    let good = r#"{"prompt": "p", "response": "r", "x_tgt": "a", "y_tgt": "b"}"#;
    fails_with(
        format!("{good}\n{{\"prompt\": \"p\",\n").as_bytes(),
        &[],
        &["in.jsonl:2", "EOF while parsing", "--skip-bad"],
    );
    fails_with(b"", &[], &["in.jsonl:1", "empty"]);
    fails_with(
        format!("{good}\n").as_bytes(),
        &["--format", "csv"],
        &["unknown format `csv`"],
    );
    fails_with(
        b"{\"prompt\": \"p\"}\n",
        &["--format", "pairs"],
        &["in.jsonl:1", "missing field `response`"],
    );
    fails_with(
        b"{\"prompt\": \"caf\xe9\", \"response\": \"r\"}\n",
        &[],
        &["in.jsonl:1", "not valid UTF-8"],
    );
    fails_with(
        b"{\"foo\": 1}\n",
        &[],
        &["cannot tell the format", "--format"],
    );
    fails_with(
        format!("{good}\n").as_bytes(),
        &["--translator", "model:/models/m2m100"],
        &["not available yet", "openai:BASE_URL#MODEL"],
    );
    let no_cols = r#"{"prompt": "p", "response": "r"}"#;
    fails_with(
        format!("{no_cols}\n").as_bytes(),
        &[],
        &["no target columns", "prompt_sw"],
    );

    // --skip-bad continues past the malformed line and counts it.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let good2 = r#"{"id": 2, "prompt": "Tell me about the river.", "response": "The river is long.", "prompt_sw": "Niambie kuhusu mto.", "response_sw": "Mto ni mrefu."}"#;
    std::fs::write(&input, format!("{good2}\nnot json\n")).unwrap();
    let out = dir.path().join("q.jsonl");
    ok(&prepare_cmd(
        &input,
        &out,
        "columns",
        &["--skip-bad", "--val-fraction", "0"],
    )
    .output()
    .unwrap());
    let quads = read_jsonl(&out);
    assert_eq!(quads.len(), 1);
    assert_eq!(quads[0]["x_tgt"], "Niambie kuhusu mto.");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        summary["ingest"]["skipped_bad"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn dry_run_prints_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.jsonl");
    let run = prepare_cmd(
        &fixtures().join("oasst_trees.jsonl"),
        &out,
        "openai:http://127.0.0.1:9/v1#t",
        &["--dry-run", "--limit", "1"],
    )
    .output()
    .unwrap();
    ok(&run);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains("How do plants make their food?") && text.contains("photosynthesis"),
        "{text}"
    );
    assert!(
        text.contains("\"format\": \"oasst\"") && text.contains("selected: 1 pairs"),
        "{text}"
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}
