//! Hostile files and hostile web pages (issue 36): each finding of the probe, reproduced the way
//! it was found (the built binary, under an address-space limit of a few GB, or a real server on
//! loopback spoken to over TCP), now an error with exit code 1 or an HTTP refusal, with the
//! server still answering and no byte of a file outside the model read.

mod common;
use common::{fixtures, refused, s};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clo_core::gguf::{GgufFile, TensorOut, Value, write_gguf};

/// The address space a hostile command runs in: enough for clo and a tiny model, far too
/// little for what the hostile sizes would allocate.
const AS_LIMIT: &str = "4000000000";

/// `clo ARGS` under `prlimit --as` (the probe's set-up): an allocation beyond the limit would
/// abort the process (exit 134), never succeed.
fn clo_limited(args: &[&str]) -> Output {
    Command::new("prlimit")
        .arg(format!("--as={AS_LIMIT}"))
        .arg(env!("CARGO_BIN_EXE_clo"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("prlimit runs clo (util-linux)")
}

/// A copy of fixture model `name` in a temporary directory, as `dir/model`.
fn model_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(fixtures().join("models").join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
    }
    (dir, model)
}

/// Sets `field` of the model's config.json.
fn set_config(model: &Path, field: &str, value: serde_json::Value) {
    let path = model.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c[field] = value;
    std::fs::write(&path, c.to_string()).unwrap();
}

/// Finding 1: settings that become allocations. `clo train --lora-rank 1000000000` and
/// `--grad-accum 1000000000` aborted (exit 134); now they are refused by name.
#[test]
fn huge_run_settings_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/qwen2");
    let data = fixtures().join("data/quads.jsonl");
    let out = dir.path().join("run");
    let base = [
        "train",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--steps",
        "1",
    ];
    for (extra, field) in [
        (
            &["--trainable", "lora", "--lora-rank", "1000000000"][..],
            "lora_rank",
        ),
        (&["--grad-accum", "1000000000"][..], "grad_accum"),
        (&["--batch-size", "1000000000"][..], "batch_size"),
        (&["--max-len", "1000000000000"][..], "max_len"),
        // Within the bound, but above the model's smallest adapted dimension.
        (
            &["--trainable", "lora", "--lora-rank", "4096"][..],
            "lora_rank",
        ),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let err = refused(&clo_limited(&args));
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        assert!(!out.join("metrics.jsonl").exists(), "nothing trained");
    }
}

/// Finding 2: a config.json whose sizes abort or panic every command that opens it.
#[test]
fn hostile_config_json_is_an_error_for_every_command() {
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("num_hidden_layers", 1_000_000.into(), "num_hidden_layers"),
        ("num_attention_heads", 0.into(), "num_attention_heads"),
        ("num_key_value_heads", 0.into(), "num_key_value_heads"),
        ("hidden_size", 0.into(), "hidden_size"),
        ("vocab_size", serde_json::json!(1u64 << 40), "vocab_size"),
        (
            "max_position_embeddings",
            serde_json::json!(u64::MAX),
            "max_position_embeddings",
        ),
    ];
    for (field, value, named) in cases {
        let (_dir, model) = model_copy("qwen2");
        set_config(&model, field, value.clone());
        for args in [
            vec!["inspect", "--model", s(&model)],
            vec![
                "generate",
                "--model",
                s(&model),
                "--prompt",
                "hi",
                "--max-new-tokens",
                "2",
            ],
        ] {
            let err = refused(&clo_limited(&args));
            assert!(err.contains(named), "{field} = {value}: {err}");
        }
    }
}

/// Sizes inside every bound whose weights still do not fit: refused with the estimate and the
/// limit, before any allocation.
#[test]
fn a_model_too_large_for_memory_is_refused_with_the_estimate() {
    let (_dir, model) = model_copy("qwen2");
    set_config(&model, "hidden_size", 16384.into());
    set_config(&model, "num_attention_heads", 128.into());
    set_config(&model, "num_key_value_heads", 8.into());
    set_config(&model, "head_dim", 128.into());
    set_config(&model, "intermediate_size", 53248.into());
    set_config(&model, "num_hidden_layers", 126.into());
    let err = refused(&clo_limited(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "hi",
    ]));
    assert!(
        err.contains("needs about") && err.contains("GiB") && err.contains("CLO_MEMORY_LIMIT"),
        "{err}"
    );
    // inspect reads the config only: it still describes the model.
    let out = clo_limited(&["inspect", "--model", s(&model)]);
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{out:?}"
    );
}

/// The GGUF fixture with its metadata changed by `edit` (tensors as they were).
fn gguf_with(edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<TensorOut>)) -> Vec<u8> {
    let file = GgufFile::read(&fixtures().join("gguf/spm-llama.gguf")).unwrap();
    let mut meta: Vec<(String, Value)> = file
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut tensors: Vec<TensorOut> = file
        .tensors
        .iter()
        .map(|t| TensorOut {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            bytes: file.tensor_bytes(t).to_vec(),
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let mut bytes = Vec::new();
    write_gguf(&mut bytes, &meta, &tensors).unwrap();
    bytes
}

fn set_meta(meta: &mut [(String, Value)], key: &str, value: Value) {
    let slot = meta.iter_mut().find(|(k, _)| k == key).expect(key);
    slot.1 = value;
}

/// Finding 2 for GGUF files, and finding 6's 2^40-tensor file: each an error naming the key or
/// the tensor, for inspect and generate alike.
#[test]
fn hostile_gguf_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "block_count",
            gguf_with(|m, _| set_meta(m, "llama.block_count", Value::U32(1_000_000))),
            "llama.block_count",
        ),
        (
            "head_count",
            gguf_with(|m, _| set_meta(m, "llama.attention.head_count", Value::U32(0))),
            "llama.attention.head_count",
        ),
        (
            "dims",
            gguf_with(|_, t| t[0].dims = vec![1 << 33, 1 << 33]),
            "overflows",
        ),
        (
            "offset",
            gguf_with(|_, t| {
                let last = t.len() - 1;
                t[last].dims = vec![u64::MAX / 2 + 1];
            }),
            "",
        ),
    ];
    // A header claiming 2^40 tensors.
    let mut many = gguf_with(|_, _| {});
    many[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    cases.push(("tensor count", many, "1099511627776 tensors"));
    for (what, bytes, named) in cases {
        let path = dir.path().join(format!("{}.gguf", what.replace(' ', "-")));
        std::fs::write(&path, bytes).unwrap();
        for args in [
            vec!["inspect", "--model", s(&path)],
            vec![
                "generate",
                "--model",
                s(&path),
                "--prompt",
                "hi",
                "--max-new-tokens",
                "2",
            ],
        ] {
            let err = refused(&clo_limited(&args));
            assert!(err.contains(named), "{what}: {err}");
        }
    }
}

const CANARY: &str = "CANARY-7f3e-never-read";

/// Finding 3: an index whose `weight_map` names a file outside the model (absolute, or up
/// the tree) is refused before anything opens it; the canary's bytes appear nowhere.
#[test]
fn an_index_never_opens_a_file_outside_the_model() {
    for shard in [
        "ABS",
        "../secret.safetensors",
        "sub/../../secret.safetensors",
    ] {
        let (dir, model) = model_copy("llama");
        let secret = dir.path().join("secret.safetensors");
        std::fs::write(&secret, format!("{CANARY}{}", "x".repeat(64))).unwrap();
        let shard = if shard == "ABS" { s(&secret) } else { shard };
        let index = model.join("model.safetensors.index.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        let first = v["weight_map"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        v["weight_map"][first] = shard.into();
        std::fs::write(&index, v.to_string()).unwrap();
        let out = clo_limited(&["generate", "--model", s(&model), "--prompt", "hi"]);
        let err = refused(&out);
        assert!(err.contains("weight_map") && err.contains("plain"), "{err}");
        let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
        assert!(!all.contains(CANARY), "{all}");
    }
}

// ---- The server, over TCP ----

/// `clo serve` on a free loopback port, stopped when dropped.
struct Server {
    child: Child,
    addr: String,
    work: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Server {
    let work = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(["serve", "--port", "0", "--toy", "--workdir", s(work.path())])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "clo serve stopped before it printed its address");
        if let Some(addr) = line.trim().strip_prefix("clo serve: http://") {
            break addr.to_string();
        }
    };
    // Keep reading stdout so that the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Server { child, addr, work }
}

/// One HTTP/1.1 request as raw bytes; the status and the body of the answer.
fn http(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {}\r\n", server.addr));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn alive(server: &Server) {
    let (status, body) = http(server, "GET", "/api/health", &[], "");
    assert_eq!(status, 200, "{body}");
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Findings 1 and 2 at the server: a run request with a huge LoRA rank or batch is a 400 and
/// the server keeps answering; a broken model in `models/` is listed with its error and hides
/// none of the others.
#[test]
fn the_server_refuses_huge_runs_and_lists_broken_models() {
    let server = serve(&[]);
    for config in [
        r#"{"trainable": "lora", "lora_rank": 1000000000}"#,
        r#"{"batch_size": 1000000000}"#,
        r#"{"grad_accum": 1000000000}"#,
    ] {
        let body = format!(r#"{{"model": "toy", "dataset": "toy", "config": {config}}}"#);
        let (status, answer) = http(&server, "POST", "/api/runs", &[JSON], &body);
        assert_eq!(status, 400, "{config}: {answer}");
        alive(&server);
    }
    // A model whose config.json would divide by zero, and one with a million layers.
    for (name, field, value) in [
        ("zero-heads", "num_attention_heads", 0),
        ("million-layers", "num_hidden_layers", 1_000_000),
    ] {
        let dir = server.work.path().join("models").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("models/qwen2/config.json")).unwrap(),
        )
        .unwrap();
        c[field] = value.into();
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    }
    let (status, body) = http(&server, "GET", "/v1/models", &[], "");
    assert_eq!(status, 200, "{body}");
    let v1: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = v1["data"].as_array().unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&"toy") && ids.contains(&"zero-heads"),
        "{body}"
    );
    let broken = listed.iter().find(|m| m["id"] == "million-layers").unwrap();
    let error = broken["error"].as_str().unwrap();
    assert!(error.contains("num_hidden_layers"), "{broken}");
    let (status, body) = http(&server, "GET", "/api/models", &[], "");
    assert_eq!(status, 200, "{body}");
    let models: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let broken = models.iter().find(|m| m["name"] == "zero-heads").unwrap();
    let error = broken["error"].as_str().unwrap();
    assert!(error.contains("num_attention_heads"), "{error}");
    assert!(
        !error.contains(s(server.work.path())),
        "no server path: {error}"
    );
    let toy = models.iter().find(|m| m["name"] == "toy").unwrap();
    assert!(
        toy["error"].is_null() && toy["model_type"].is_string(),
        "{toy}"
    );
    alive(&server);
}

/// Finding 3 at the server: every `/` percent-encoded does not walk out of the model.
#[test]
fn the_files_route_serves_single_names_only() {
    let server = serve(&[]);
    let secret = server.work.path().join("secret.safetensors");
    std::fs::write(&secret, CANARY).unwrap();
    for path in [
        "/api/models/toy/files/model-x%2f..%2f..%2f..%2fsecret.safetensors",
        "/api/models/toy/files/..%2f..%2fsecret.safetensors",
        "/api/models/toy/files/%2e%2e%2f%2e%2e%2fsecret.safetensors",
        "/api/models/toy/files/model-x%5c..%5c..%5csecret.safetensors",
    ] {
        let (status, body) = http(&server, "GET", path, &[], "");
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
        assert!(!body.contains(CANARY), "{path}: {body}");
    }
    let (status, _) = http(&server, "GET", "/api/models/toy/files/config.json", &[], "");
    assert_eq!(status, 200, "the model's own files are served");
    // Nor does the server's log hold a byte of the canary.
    let log = std::fs::read_to_string(server.work.path().join("server.log")).unwrap();
    assert!(!log.contains(CANARY), "{log}");
}

/// Finding 4: a foreign Host (DNS rebinding) is 421; a state-changing request from another
/// origin is 403, from a form or a fetch; form-encoded and text bodies are 415 on the API. The
/// server's own origin and clients without an Origin (OpenAI clients, curl) pass.
#[test]
fn other_hosts_and_origins_cannot_drive_the_server() {
    let server = serve(&[
        "--allowed-host",
        "clo.lan",
        "--allowed-origin",
        "http://app.example:3000",
    ]);
    let (status, body) = http(&server, "GET", "/api/runs", &[("Host", "evil.example")], "");
    assert_eq!(status, 421, "{body}");
    let (status, body) = http(
        &server,
        "GET",
        "/api/health",
        &[("Host", "evil.example:8080")],
        "",
    );
    assert_eq!(status, 421, "{body}");
    let (status, _) = http(
        &server,
        "GET",
        "/api/health",
        &[("Host", "localhost:1234")],
        "",
    );
    assert_eq!(status, 200);
    let (status, _) = http(&server, "GET", "/api/health", &[("Host", "clo.lan")], "");
    assert_eq!(status, 200, "--allowed-host widens the names");

    let cancel = "/api/runs/some-run/cancel";
    let own = format!("http://{}", server.addr);
    for (origin, kind, expected) in [
        (
            "http://evil.example",
            "application/x-www-form-urlencoded",
            403,
        ),
        ("http://evil.example", "application/json", 403),
        ("null", "text/plain", 403),
        ("http://localhost:1", "application/json", 403),
        // The server's own pages: past the guard (the run does not exist).
        (own.as_str(), "application/json", 404),
        ("http://app.example:3000", "application/json", 404),
    ] {
        let (status, body) = http(
            &server,
            "POST",
            cancel,
            &[("Origin", origin), ("Content-Type", kind)],
            "",
        );
        assert_eq!(status, expected, "{origin} {kind}: {body}");
    }
    // No Origin (an OpenAI client, curl), but a form or text body: still refused on the API.
    for kind in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain;charset=UTF-8",
    ] {
        let (status, body) = http(&server, "POST", cancel, &[("Content-Type", kind)], "a=b");
        assert_eq!(status, 415, "{kind}: {body}");
    }
    let (status, _) = http(&server, "POST", cancel, &[JSON], "{}");
    assert_eq!(status, 404, "no Origin and JSON: served");
    alive(&server);
}

/// Finding 5: a client that sends its headers slowly is cut off after `--read-timeout`, and
/// connections beyond `--max-connections` are closed while the others wait; the server
/// answers as soon as they are gone.
#[test]
fn slow_clients_are_cut_off_and_connections_are_bounded() {
    let server = serve(&["--read-timeout", "1", "--max-connections", "4"]);
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the slow client was held for {waited:?}"
    );
    // Four idle connections fill the limit of a second server (a read timeout of 4 s, so that
    // they stay open while the fifth knocks): the fifth is closed at once, unserved.
    let server = serve(&["--read-timeout", "4", "--max-connections", "4"]);
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(&server.addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = fifth.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut answer = Vec::new();
    let closed = fifth.read_to_end(&mut answer);
    // Closed: an end of file, or a reset (the server closed with our request unread); not a
    // timeout, and no answer.
    let reset = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    };
    assert!(
        closed.as_ref().map_or_else(reset, |_| true) && answer.is_empty(),
        "the fifth connection was not closed at once: {closed:?} {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The idle ones time out; then the server answers again.
    std::thread::sleep(Duration::from_secs(5));
    drop(idle);
    alive(&server);
}

/// Finding 6: no "XDG_RUNTIME_DIR is invalid" lines (Mesa's device-select layer looking for a
/// display) on a headless machine when a command opens wgpu.
#[test]
fn a_headless_wgpu_command_prints_no_display_warnings() {
    let out = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(["generate", "--model"])
        .arg(fixtures().join("models/qwen2"))
        .args([
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
            "--device",
            "wgpu:cpu",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}
