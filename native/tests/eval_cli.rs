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

/// An OpenAI-compatible judge on loopback (real HTTP, real JSON). It ranks first the output
/// that contains `[good]`, wherever it is shown; the instruction `garbled` gets prose that is no
/// ranking; the instruction `first` gets "the first shown output wins" (pure position bias).
/// The first request is answered 500 and the second 429, to be retried. Every request body and
/// its Authorization header are recorded.
/// Request bodies with their Authorization header.
type Log = std::sync::Arc<std::sync::Mutex<Vec<(Value, Option<String>)>>>;

struct Judge {
    base: String,
    requests: Log,
}

fn start_judge() -> Judge {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", server.server_addr().to_ip().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for (n, mut req) in server.incoming_requests().enumerate() {
            let mut body = String::new();
            std::io::Read::read_to_string(req.as_reader(), &mut body).unwrap();
            let auth = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.to_string());
            let json: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(req.url(), "/v1/chat/completions");
            log.lock().unwrap().push((json.clone(), auth));
            let status = match n {
                0 => 500,
                1 => 429,
                _ => 200,
            };
            let user = json["messages"][1]["content"].as_str().unwrap();
            let m_pos = user.find("\"model\": \"m\"").unwrap();
            let big_pos = user.find("\"model\": \"M\"").unwrap();
            let good = user.find("[good]");
            // m's output lies between the two identifiers.
            let m_first = match good {
                Some(g) => m_pos < g && g < big_pos,
                None => true,
            };
            let content = if user.contains("\"instruction\": \"garbled\"") {
                "Both answers have merits.".to_string()
            } else {
                let (first, second) = if m_first { ("m", "M") } else { ("M", "m") };
                format!(
                    r#"[{{"model": "{first}", "rank": 1}}, {{"model": "{second}", "rank": 2}}]"#
                )
            };
            let reply = serde_json::json!({
                "id": "x", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            });
            let response = tiny_http::Response::from_string(reply.to_string())
                .with_status_code(status)
                .with_header(
                    tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap(),
                );
            req.respond(response).unwrap();
        }
    });
    Judge { base, requests }
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn judge_over_loopback_swaps_positions_retries_and_scores() {
    let judge = start_judge();
    let dir = tempfile::tempdir().unwrap();
    let row = |id: &str, prompt: &str, response: &str, lang: &str| serde_json::json!({"id": id, "prompt": prompt, "response": response, "lang": lang});
    // a wins q1 and q2, b wins q3, q4 is position-biased (tie), q5 unreadable (invalid, tie).
    let a = [
        row("q1", "Habari?", "Nzuri sana [good]", "sw"),
        row("q2", "Hello?", "Fine, thanks [good]", "en"),
        row("q3", "Jina lako?", "Sijui", "sw"),
        row("q4", "first", "x", "sw"),
        row("q5", "garbled", "y", "sw"),
    ];
    let b = [
        row("q3", "Jina lako?", "Jina langu ni clo [good]", "sw"),
        row("q1", "Habari?", "I am fine", "sw"),
        row("q2", "Hello?", "Hi", "en"),
        row("q5", "garbled", "z", "sw"),
        row("q4", "first", "w", "sw"),
    ];
    write_lines(&dir.path().join("a.jsonl"), &a);
    write_lines(&dir.path().join("b.jsonl"), &b);
    let out = dir.path().join("judged");
    let run = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(["eval", "judge", "--a"])
        .arg(dir.path().join("a.jsonl"))
        .arg("--b")
        .arg(dir.path().join("b.jsonl"))
        .arg("--judge")
        .arg(format!("openai:{}#judge-model", judge.base))
        .arg("--out")
        .arg(&out)
        .args(["--concurrency", "1", "--retries", "2"])
        .env("OPENAI_API_KEY", "sekret")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let requests = judge.requests.lock().unwrap().clone();
    // 2 failed + 2 orders x 4 readable pairs + 2 orders x 3 tries for the garbled one.
    assert_eq!(requests.len(), 2 + 8 + 6, "{}", requests.len());
    for (body, auth) in &requests {
        assert_eq!(auth.as_deref(), Some("Bearer sekret"));
        assert_eq!(body["model"], "judge-model");
        assert!(
            body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("evaluates and rank")
        );
    }
    // Both orders: for q1, A's text is shown as `m` once and as `M` once.
    let q1: Vec<&str> = requests
        .iter()
        .map(|(b, _)| b["messages"][1]["content"].as_str().unwrap())
        .filter(|u| u.contains("Habari?"))
        .collect();
    let a_as_m = |u: &&&str| u.find("Nzuri sana") < u.find("I am fine");
    assert_eq!(
        q1.iter().filter(a_as_m).count(),
        3,
        "500, 429, then A-first answered"
    );
    assert_eq!(q1.len(), 4);
    // The language clause only for non-English instructions.
    let clause = "responds in a language different";
    for (body, _) in &requests {
        let u = body["messages"][1]["content"].as_str().unwrap();
        assert_eq!(u.contains(clause), !u.contains("Hello?"), "{u}");
    }

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let all = &results["overall"];
    assert_eq!(all["n"], 5);
    assert_eq!(
        (
            all["wins"].as_u64(),
            all["ties"].as_u64(),
            all["losses"].as_u64()
        ),
        (Some(2), Some(2), Some(1))
    );
    assert_eq!(all["invalid_judgements"], 2);
    assert_eq!(all["order_disagreements"], 1);
    assert!((all["win_rate"].as_f64().unwrap() - 0.6).abs() < 1e-12);
    assert_eq!(results["per_language"]["en"]["win_rate"], 1.0);
    let lines = std::fs::read_to_string(out.join("responses.jsonl")).unwrap();
    let items: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 5);
    assert_eq!(items[4]["id"], "q5");
    assert_eq!(items[4]["judgements"][0]["tries"], 3);
    assert_eq!(items[4]["judgements"][0]["verdict"], "invalid");
}

#[test]
fn judge_refuses_mismatched_responses() {
    let dir = tempfile::tempdir().unwrap();
    let row =
        |id: &str, prompt: &str| serde_json::json!({"id": id, "prompt": prompt, "response": "r"});
    write_lines(&dir.path().join("a.jsonl"), &[row("1", "p"), row("2", "q")]);
    write_lines(&dir.path().join("b.jsonl"), &[row("1", "p")]);
    let run = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(["eval", "judge", "--a"])
        .arg(dir.path().join("a.jsonl"))
        .arg("--b")
        .arg(dir.path().join("b.jsonl"))
        .args(["--judge", "openai:http://127.0.0.1:9/v1#j"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("a.jsonl:2") && err.contains("id `2` has no response"),
        "{err}"
    );
    assert!(!dir.path().join("judge").exists());
}

fn run_clo(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(args)
        .output()
        .unwrap()
}

/// `clo eval gen` on the llama3 fixture, greedy and batched: the open prompts continue exactly as
/// transformers does (fixture `expected.json`); the MMMLU-style record, which a random model
/// cannot answer in the asked format, is regenerated three times and counted wrong; the
/// results agree with the responses; `clo eval report` turns the results into a table.
#[test]
fn gen_batches_regenerates_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/llama3");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("expected.json")).unwrap())
            .unwrap();
    let greedy = expected["greedy"].as_array().unwrap();
    let mut lines: Vec<Value> = greedy
        .iter()
        .enumerate()
        .map(|(i, g)| serde_json::json!({"id": format!("g{i}"), "prompt": g["prompt"], "lang": "en"}))
        .collect();
    lines.push(
        serde_json::json!({"id": "mmmlu-1", "question": "Mji mkuu wa Kenya ni upi?",
        "options": ["Mombasa", "Nairobi", "Kisumu", "Nakuru"], "answer": "B", "lang": "sw"}),
    );
    let prompts = dir.path().join("prompts.jsonl");
    write_lines(&prompts, &lines);
    let out = dir.path().join("base/gen");
    let run = run_clo(&[
        "eval".as_ref(),
        "gen".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--prompts".as_ref(),
        prompts.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--no-chat-template".as_ref(),
        "--temperature".as_ref(),
        "0".as_ref(),
        "--max-new-tokens".as_ref(),
        "12".as_ref(),
        "--batch-size".as_ref(),
        "3".as_ref(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let items: Vec<Value> = std::fs::read_to_string(out.join("responses.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 3);
    let tok = clo_core::tokenizer::ChatTokenizer::from_dir(&model, &[]).unwrap();
    for (item, g) in items.iter().zip(greedy) {
        let ids: Vec<u32> = g["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids: Vec<u32> = ids
            .into_iter()
            .filter(|t| !tok.eos_ids().contains(t))
            .collect();
        assert_eq!(item["response"], tok.decode(&ids, true).unwrap(), "{item}");
        assert_eq!(item["attempts"], 1);
        assert!(item.get("correct").is_none());
    }
    let mmmlu = &items[2];
    assert_eq!(mmmlu["answer"], "B");
    assert!(
        mmmlu["input"]
            .as_str()
            .unwrap()
            .starts_with("Jibu swali lifuatalo")
    );
    assert!(
        mmmlu["input"]
            .as_str()
            .unwrap()
            .ends_with("B) Nairobi\nC) Kisumu\nD) Nakuru")
    );
    if mmmlu.get("extracted").is_none() {
        assert_eq!(mmmlu["attempts"], 4, "{mmmlu}");
        assert_eq!(mmmlu["correct"], false);
    }
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for lang in ["en", "sw"] {
        let mine: Vec<&Value> = items.iter().filter(|i| i["lang"] == lang).collect();
        let st = &results["per_language"][lang];
        let in_lang = mine.iter().filter(|i| i["in_language"] == true).count();
        assert_eq!(st["fidelity"]["n"], mine.len());
        assert_eq!(st["fidelity"]["correct"], in_lang);
        let detected: u64 = st["detected"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(detected as usize, mine.len());
    }
    assert_eq!(results["per_language"]["sw"]["choice_accuracy"]["n"], 1);
    assert_eq!(
        results["config"]["language_id"]["languages"],
        serde_json::json!(["en", "sw"])
    );

    let report = dir.path().join("report");
    let run = run_clo(&[
        "eval".as_ref(),
        "report".as_ref(),
        dir.path().join("base").as_os_str(),
        "--out".as_ref(),
        report.as_os_str(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    let fid = |lang: &str| {
        results["per_language"][lang]["fidelity"]["accuracy"]
            .as_f64()
            .unwrap()
    };
    let row = format!("| base | {:.3} ± ", fid("en"));
    assert!(
        md.contains("## Language fidelity") && md.contains(&row),
        "{md}"
    );
    assert!(report.join("fidelity.svg").exists() && report.join("choice_accuracy.svg").exists());
}

#[test]
fn gen_refuses_bad_prompts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\", \"lang\": \"en\"}\n{\"question\": \"q\", \"options\": [\"a\",\"b\",\"c\",\"d\"], \"answer\": 7, \"lang\": \"sw\"}\n").unwrap();
    let out = dir.path().join("out");
    let run = run_clo(&[
        "eval".as_ref(),
        "gen".as_ref(),
        "--model".as_ref(),
        fixtures().join("models/llama3").as_os_str(),
        "--prompts".as_ref(),
        prompts.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("prompts.jsonl:2") && err.contains("answer 7 is out of range"),
        "{err}"
    );
    assert!(!out.exists());
}
