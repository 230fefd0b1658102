//! The handler tests of `clo serve`.

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::*;
use clo_core::load::models::Precision;

/// Each kind of core error answers with its own status and error kind in the body.
#[tokio::test]
async fn core_error_kinds_map_to_statuses() {
    use clo_core::CoreError;
    let io = |kind| CoreError::Io {
        action: "read",
        path: "x".into(),
        cause: std::io::Error::from(kind),
    };
    let cases = [
        (
            CoreError::MissingFile {
                path: "m".into(),
                what: "model config",
            },
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            io(std::io::ErrorKind::NotFound),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            CoreError::Invalid("bad".into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            CoreError::UnsupportedConfig {
                path: "c".into(),
                field: "model_type",
                value: "\"gpt2\"".into(),
                supported: "llama",
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported",
        ),
        (
            CoreError::Locked {
                path: "r".into(),
                pid: "7".into(),
            },
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            io(std::io::ErrorKind::StorageFull),
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        ),
        (
            io(std::io::ErrorKind::PermissionDenied),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        ),
        (
            CoreError::Internal("reading numbers back".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        ),
    ];
    for (err, status, kind) in cases {
        let message = err.to_string();
        let res = ApiError::from(err).into_response();
        assert_eq!(res.status(), status, "{message}");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], kind, "{message}: {v}");
        if kind == "internal" {
            // An internal fault carries the id of its line in the server's log.
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("error id E"),
                "{v}"
            );
        }
    }
}

fn app(token: Option<&str>) -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen2");
    let state = AppState::new(
        dir.path().join("work"),
        &[model],
        token.map(String::from),
        "cpu",
        Precision::F32,
        GenLimits::default(),
    )
    .unwrap();
    runs::start(&state).unwrap();
    (dir, router(state, None))
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn token_is_required_on_every_api_call_when_set() {
    let (_d, app) = app(Some("s3cret"));
    let (status, body) = call(&app, get("/api/models")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["type"], "unauthorized");
    let (status, _) = call(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let req = Request::get("/api/models")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["name"], "qwen2");
    assert_eq!(body[0]["model_type"], "qwen2");
}

#[tokio::test]
async fn traversal_and_bad_json_are_refused_with_a_message() {
    let (_d, app) = app(None);
    for uri in [
        "/api/datasets/..%2F..%2Fetc",
        "/api/runs/..",
        "/api/models/.hidden",
    ] {
        let (status, body) = call(&app, get(uri)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("invalid"),
            "{uri}: {body}"
        );
    }
    let req = Request::post("/api/runs")
        .header("content-type", "application/json")
        .body(Body::from("{\"model\": "))
        .unwrap();
    let (status, body) = call(&app, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    let req = Request::post("/api/runs")
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; BODY_LIMIT + 10]))
        .unwrap();
    let (status, _) = call(&app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = call(&app, get("/api/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "not_found");
}

fn post(uri: &str, body: serde_json::Value) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn text(app: &Router, req: Request<Body>) -> (StatusCode, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Greedy answers are the same streamed and not: the deltas of the SSE chunks concatenate
/// to the non-streamed message, and both stop for the same reason.
#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_stream_the_same_answer() {
    let (_d, app) = app(None);
    let (status, models) = call(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "qwen2", "{models}");
    let req = |stream| {
        post(
            "/v1/chat/completions",
            serde_json::json!({"model": "qwen2", "stream": stream, "temperature": 0.0,
                               "max_tokens": 12, "messages": [{"role": "user", "content": "Habari?"}]}),
        )
    };
    let (status, whole) = call(&app, req(false)).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    let message = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(whole["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let (status, sse) = text(&app, req(true)).await;
    assert_eq!(status, StatusCode::OK);
    let datas: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let chunks: Vec<serde_json::Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, message);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    // The whole conversation is the prompt: earlier turns lengthen it.
    let (_, longer) = call(&app, post("/v1/chat/completions", serde_json::json!({"model": "qwen2", "temperature": 0.0, "max_tokens": 4,
        "messages": [{"role": "user", "content": "Jambo"}, {"role": "assistant", "content": "Jambo sana"}, {"role": "user", "content": "Habari?"}]}))).await;
    assert!(
        longer["usage"]["prompt_tokens"].as_u64() > whole["usage"]["prompt_tokens"].as_u64(),
        "{longer}"
    );
    let (status, body) = call(&app, post("/v1/chat/completions", serde_json::json!({"model": "qwen2", "messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "x"}]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("tool"),
        "{body}"
    );
    let (status, body) = call(
        &app,
        post(
            "/v1/chat/completions",
            serde_json::json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// Reliability at the API's edge: every error keeps the JSON shape (405, bad query values),
/// names no server path, a prompt beyond the context is refused with its numbers, a run's
/// layer range is checked when it is posted, and completions get ids of their own.
#[tokio::test(flavor = "multi_thread")]
async fn errors_keep_their_shape_and_bounds_hold_at_the_edge() {
    let (dir, app) = app(None);
    let (status, body) = call(
        &app,
        Request::delete("/api/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["error"]["type"], "method_not_allowed", "{body}");
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join("datasets")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/quads.jsonl"),
        work.join("datasets/q.jsonl"),
    )
    .unwrap();
    let (status, body) = call(&app, get("/api/datasets/q?limit=-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );

    // A run whose layers do not fit the model: refused now, not once it starts.
    let (status, body) = call(
        &app,
        post(
            "/api/runs",
            serde_json::json!({"model": "qwen2", "dataset": "q", "config": {"layers": [0, 99]}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("layers"),
        "{body}"
    );

    // A broken model in the work directory: the error names it without server paths.
    let broken = work.join("models/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{").unwrap();
    let (status, body) = call(&app, get("/api/models/broken")).await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("models/broken/config.json"), "{message}");
    let abs = std::path::absolute(&work).unwrap().display().to_string();
    assert!(
        !message.contains(&abs) && !message.contains(&*dir.path().display().to_string()),
        "{message}"
    );

    // A prompt beyond the context: 400 with the numbers, before any generation.
    let long = "habari ".repeat(3000);
    let (status, body) = call(
        &app,
        post(
            "/v1/chat/completions",
            serde_json::json!({"model": "qwen2", "messages": [{"role": "user", "content": long}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("tokens exceed the limit of") && message.contains("context"),
        "{message}"
    );
    let (_, health) = call(&app, get("/api/health")).await;
    assert_eq!(health["tokens_generated"], 0, "{health}");

    let chat = || {
        post(
            "/v1/chat/completions",
            serde_json::json!({"model": "qwen2", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
        )
    };
    let (_, a) = call(&app, chat()).await;
    let (_, b) = call(&app, chat()).await;
    assert!(a["id"].as_str().is_some() && a["id"] != b["id"], "{a} {b}");
}

/// A streaming client that goes away stops its generation at the next token: fewer tokens
/// are generated than the same request gives when read to the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_stops_its_generation() {
    let (_d, app) = app(None);
    let req = |stream: bool, seed: u64| {
        post(
            "/v1/chat/completions",
            serde_json::json!({"model": "qwen2", "stream": stream, "temperature": 2.0, "seed": seed,
                               "max_tokens": 400, "messages": [{"role": "user", "content": "Habari?"}]}),
        )
    };
    // A seed whose answer, read to the end, is long (the tiny random model may hit EOS).
    let mut chosen = None;
    for seed in 0..40 {
        let (status, whole) = call(&app, req(false, seed)).await;
        assert_eq!(status, StatusCode::OK, "{whole}");
        let n = whole["usage"]["completion_tokens"].as_u64().unwrap();
        if n >= 200 {
            chosen = Some((seed, n));
            break;
        }
    }
    let (seed, full) = chosen.expect("a seed with a long answer");
    let (_, before) = call(&app, get("/api/health")).await;
    let before = before["tokens_generated"].as_u64().unwrap();

    let res = app.clone().oneshot(req(true, seed)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body().into_data_stream();
    use futures_util::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    drop(body);
    let left = std::time::Instant::now();
    loop {
        let (_, h) = call(&app, get("/api/health")).await;
        if h["generations_running"] == 0 {
            let generated = h["tokens_generated"].as_u64().unwrap() - before;
            assert!(
                generated < full,
                "{generated} of {full} tokens generated after the client left"
            );
            break;
        }
        assert!(
            left.elapsed() < std::time::Duration::from_secs(1),
            "still generating 1 s after the client left: {h}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// More requests than slots and queue: the surplus gets 503 with Retry-After at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen2");
    let limits = GenLimits {
        max_generations: 1,
        queue: 1,
        max_prompt_tokens: None,
    };
    let state = AppState::new(
        dir.path().join("work"),
        &[model],
        None,
        "cpu",
        Precision::F32,
        limits,
    )
    .unwrap();
    runs::start(&state).unwrap();
    let app = router(state, None);
    let req = || {
        post(
            "/v1/chat/completions",
            serde_json::json!({"model": "qwen2", "temperature": 1.0, "max_tokens": 300, "messages": [{"role": "user", "content": "x"}]}),
        )
    };
    // Load the model first, so that all requests meet at the slots.
    call(&app, post("/v1/chat/completions", serde_json::json!({"model": "qwen2", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}))).await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.oneshot(req()).await.unwrap() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let res = t.await.unwrap();
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(res.headers().contains_key("retry-after"));
        }
        statuses.push(res.status());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let busy = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(ok >= 2 && busy >= 1 && ok + busy == 6, "{statuses:?}");
}

/// A run created through the API trains in the background; its metrics arrive as SSE
/// events, one per step, then `end` with the final state; it is listed and exportable.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_trains_and_streams_its_metrics() {
    let (d, app) = app(None);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/quads.jsonl");
    std::fs::copy(&data, d.path().join("work/datasets/quads.jsonl")).unwrap();
    let (status, body) = call(&app, get("/api/datasets/quads?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"].as_array().unwrap().len(), 2);
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "r1", "model": "qwen2", "dataset": "quads", "config": {"steps": 3, "batch_size": 2, "lr": 1e-3}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "r2", "model": "qwen2", "dataset": "quads", "config": {"stepz": 3}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("stepz"),
        "{body}"
    );
    // The typed config takes no model or data of its own: they are named by the request.
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "r3", "model": "qwen2", "dataset": "quads", "config": {"model": "/elsewhere"}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("config.model"),
        "{body}"
    );
    let (status, sse) = text(&app, get("/api/runs/r1/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = sse.lines().filter(|l| *l == "event: metric").count();
    assert_eq!(metrics, 3, "{sse}");
    assert!(sse.contains("event: end\ndata: \"finished\""), "{sse}");
    let (_, runs) = call(&app, get("/api/runs")).await;
    assert_eq!(runs[0]["state"], "finished");
    assert_eq!(runs[0]["steps_done"], 3);
    let (status, body) = call(
        &app,
        post(
            "/api/runs/r1/export",
            serde_json::json!({"model_name": "r1-merged"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, models) = call(&app, get("/api/models")).await;
    let names: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"r1-merged") && names.contains(&"run:r1"),
        "{names:?}"
    );
}

/// `GET /api/devices` names the server's device and this machine's; a run trains data-parallel
/// on the `devices` it names (here two replicas on the CPU), and a bad list is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn runs_take_a_device_list() {
    let (d, app) = app(None);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/quads.jsonl");
    std::fs::copy(&data, d.path().join("work/datasets/quads.jsonl")).unwrap();
    let (status, body) = call(&app, get("/api/devices")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["default"], "cpu");
    assert_eq!(body["available"][0], "cpu", "{body}");
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "bad", "model": "qwen2", "dataset": "quads", "devices": "cpu,gpu9"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("devices: ") && message.contains("gpu9"),
        "{body}"
    );
    let (status, body) = call(&app, post("/api/runs", serde_json::json!({"name": "dp", "model": "qwen2", "dataset": "quads", "devices": "cpu,cpu", "config": {"steps": 2, "batch_size": 3, "lr": 1e-3}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, sse) = text(&app, get("/api/runs/dp/metrics")).await;
    assert!(sse.contains("event: end\ndata: \"finished\""), "{sse}");
    assert_eq!(sse.lines().filter(|l| *l == "event: metric").count(), 2);
}

/// The browser engine's downloads: a model's files are listed with their sizes and served
/// with Content-Length and byte ranges; nothing else of the directory is.
#[tokio::test(flavor = "multi_thread")]
async fn model_files_are_served_with_ranges() {
    let (_d, app) = app(None);
    let (status, body) = call(&app, get("/api/models/qwen2/files")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ],
        "{body}"
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen2");
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    assert_eq!(body[1]["size"], bytes.len() as u64);

    let res = app
        .clone()
        .oneshot(get("/api/models/qwen2/files/model.safetensors"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-length"].to_str().unwrap(),
        bytes.len().to_string()
    );
    let req = Request::get("/api/models/qwen2/files/model.safetensors")
        .header("range", "bytes=0-7")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    let part = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(&part[..], &bytes[..8]);
    for uri in [
        "/api/models/qwen2/files/expected.json",
        "/api/models/qwen2/files/..%2Fllama%2Fconfig.json",
        "/api/models/nope/files/config.json",
    ] {
        let (status, _) = call(&app, get(uri)).await;
        assert!(status.is_client_error(), "{uri}: {status}");
    }
}

/// A temporary directory with a work directory whose datasets hold `quads`.
fn work_with_quads() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data/quads.jsonl");
    std::fs::create_dir_all(work.join("datasets")).unwrap();
    std::fs::copy(&data, work.join("datasets/quads.jsonl")).unwrap();
    (dir, work)
}

fn state_in(work: &Path) -> Shared {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen2");
    let state = AppState::new(
        work.to_path_buf(),
        &[model],
        None,
        "cpu",
        Precision::F32,
        GenLimits::default(),
    )
    .unwrap();
    runs::start(&state).unwrap();
    state
}

/// The web UI's run form offers only settings a run takes (its choices parse), and the
/// server's defaults it starts from are the paper's.
#[tokio::test]
async fn run_defaults_are_the_papers_and_cover_the_forms_fields() {
    let (_d, app) = app(None);
    let (status, d) = call(&app, get("/api/run-config")).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    for f in clo_web::form::FIELDS {
        assert!(
            d.get(f.key).is_some(),
            "form field {} is no run setting",
            f.key
        );
        if let clo_web::form::Kind::Choice(names) = f.kind {
            for n in names {
                let parsed = serde_json::from_value::<clo_core::train::RunConfig>(
                    serde_json::json!({ f.key: n }),
                );
                assert!(parsed.is_ok(), "{}={n}: {parsed:?}", f.key);
            }
        }
    }
    assert_eq!(d["method"], "clo");
    assert_eq!(d["trainable"], "attention");
    assert_eq!(d["beta"], 0.1);
    assert_eq!(d["lambda"], 0.5);
    assert_eq!(d["lr"], 5e-5);
    assert!(d.get("model").is_none() && d.get("data").is_none());
}

/// `--toy`'s kit: the model is listed, its quadruples are paged with the language each
/// side was identified as, and the playground's language endpoint tells toy from English.
#[tokio::test(flavor = "multi_thread")]
async fn datasets_are_paged_with_the_language_of_each_side() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    clo_core::toy::shipped::write_toy_kit(
        &work.join("models/toy"),
        &work.join("datasets/toy.jsonl"),
        30,
    )
    .unwrap();
    let app = router(state_in(&work), None);
    let (_, list) = call(&app, get("/api/datasets")).await;
    assert_eq!(list[0]["name"], "toy", "{list}");
    assert_eq!(list[0]["records"], 30);
    let (status, page) = call(&app, get("/api/datasets/toy?offset=5&limit=3")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 30);
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["line"], 6);
    for r in records {
        assert_eq!(r["lang"], "toy");
        assert_eq!(r["detected"][0], "en", "{r}");
        assert_eq!(r["detected"][2], "toy", "{r}");
    }
    let (status, body) = call(&app, get("/api/datasets/toy?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&app, get("/api/datasets/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /api/datasets")
    );

    let (_, models) = call(&app, get("/api/models")).await;
    let toy = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "toy")
        .unwrap_or_else(|| panic!("{models}"));
    assert_eq!(toy["model_type"], "llama");
    let (status, info) = call(&app, get("/api/models/toy")).await;
    assert_eq!(status, StatusCode::OK, "{info}");

    let x_tgt = records[0]["x_tgt"].as_str().unwrap();
    for (text, lang) in [
        (x_tgt, serde_json::json!("toy")),
        (
            "The weather was cold, so we stayed at home and read our books.",
            serde_json::json!("en"),
        ),
        ("42 + 7", serde_json::Value::Null),
    ] {
        let (status, body) =
            call(&app, post("/api/langid", serde_json::json!({"text": text}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["lang"], lang, "{text}");
    }
    let (status, _) = call(&app, post("/api/langid", serde_json::json!({"text": 3}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The evals page's report is `clo eval report` over the work directory; with no evals it
/// says why.
#[tokio::test]
async fn eval_results_are_listed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let app = router(state_in(&work), None);
    let (status, report) = call(&app, get("/api/evals/report")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["files"], serde_json::json!({}));
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("no eval results")
    );
    let run = work.join("runs/r1");
    std::fs::create_dir_all(run.join("eval/gen")).unwrap();
    std::fs::write(
        run.join("summary.json"),
        r#"{"method": "clo", "train_quadruples": 40}"#,
    )
    .unwrap();
    let stats = clo_core::eval::generated::GenStats {
        n: 10,
        fidelity: clo_core::eval::Accuracy {
            n: 10,
            correct: 7,
            accuracy: 0.7,
            stderr: 0.14,
        },
        detected: BTreeMap::from([("sw".to_string(), 7), ("en".to_string(), 3)]),
        s_index_mean: Some(0.1),
        s_index_n: 10,
        code_switched: Some(0.2),
        choice_accuracy: None,
        unextracted: None,
    };
    clo_core::eval::EvalResults::Gen {
        model: clo_core::eval::ModelRef {
            dir: "models/m".into(),
            weights_sha256: "00".into(),
        },
        config: serde_json::json!({}),
        per_language: BTreeMap::from([("sw".to_string(), stats.clone())]),
        overall: stats,
    }
    .write(&run.join("eval/gen/results.json"))
    .unwrap();
    // Another JSON file named results.json (the quickstart's table) is not an eval result.
    std::fs::create_dir_all(run.join("other")).unwrap();
    std::fs::write(run.join("other/results.json"), r#"{"rows": []}"#).unwrap();
    let (_, evals) = call(&app, get("/api/evals")).await;
    assert_eq!(evals.as_array().unwrap().len(), 1, "{evals}");
    assert_eq!(evals[0]["path"], "runs/r1/eval/gen/results.json", "{evals}");
    assert_eq!(evals[0]["results"]["task"], "gen");
    let (_, report) = call(&app, get("/api/evals/report")).await;
    let md = report["files"]["report.md"]
        .as_str()
        .unwrap_or_else(|| panic!("{report}"));
    assert!(md.contains("clo") && md.contains("0.70"), "{md}");
    assert!(
        report["files"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.ends_with(".svg")),
        "{report}"
    );
}

async fn wait_for_state(app: &Router, run: &str, want: &str) -> serde_json::Value {
    for _ in 0..600 {
        let (_, info) = call(app, get(&format!("/api/runs/{run}"))).await;
        if info["state"] == want {
            return info;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("run {run} never became {want}");
}

/// A running run stops on cancel (a queued one at once, before it starts); a finished one
/// cannot be cancelled; a restarted server lists the runs from disk, marks the one that was
/// running as interrupted and trains the queued one.
#[tokio::test(flavor = "multi_thread")]
async fn runs_cancel_and_survive_a_restart() {
    let (_dir, work) = work_with_quads();
    let app = router(state_in(&work), None);
    let new_run = |name: &str, steps: usize| {
        post(
            "/api/runs",
            serde_json::json!({"name": name, "model": "qwen2", "dataset": "quads",
                               "config": {"steps": steps, "batch_size": 2, "save_every": 1}}),
        )
    };
    let (status, _) = call(&app, new_run("long", 100_000)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call(&app, new_run("waiting", 2)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(&app, new_run("long", 2)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The queue runs one at a time: `waiting` waits behind `long` and is cancelled at once.
    wait_for_state(&app, "long", "running").await;
    let (_, info) = call(&app, get("/api/runs/waiting")).await;
    assert_eq!(info["state"], "queued");
    let (status, info) = call(
        &app,
        post("/api/runs/waiting/cancel", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["state"], "cancelled");
    // `long` stops after a step or two, keeping checkpoints.
    let (status, _) = call(&app, post("/api/runs/long/cancel", serde_json::json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let info = wait_for_state(&app, "long", "cancelled").await;
    assert!(info["steps_done"].as_u64().unwrap() < 100_000);
    let (status, cps) = call(&app, get("/api/runs/long/checkpoints")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!cps.as_array().unwrap().is_empty(), "{cps}");
    let (status, body) = call(&app, post("/api/runs/long/cancel", serde_json::json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(&app, get("/api/runs/ghost/checkpoints")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Stop "the server" in the middle of things: one run marked running, one queued.
    for (name, state) in [("crashed", "running"), ("later", "queued")] {
        let d = work.join("runs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["run.toml", "request.json"] {
            std::fs::copy(work.join("runs/waiting").join(f), d.join(f)).unwrap();
        }
        std::fs::write(
            d.join("status.json"),
            format!(r#"{{"state": "{state}", "error": null}}"#),
        )
        .unwrap();
    }
    let restarted = router(state_in(&work), None);
    let (_, runs) = call(&restarted, get("/api/runs")).await;
    let states: BTreeMap<String, String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().into(),
                r["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(states["long"], "cancelled");
    assert_eq!(states["waiting"], "cancelled");
    assert_eq!(states["crashed"], "interrupted");
    assert!(["queued", "running", "finished"].contains(&states["later"].as_str()));
    let info = wait_for_state(&restarted, "later", "finished").await;
    assert_eq!(info["steps_done"], 2);
    let (_, info) = call(&restarted, get("/api/runs/crashed")).await;
    assert!(info["error"].as_str().unwrap().contains("server stopped"));
}

/// A subscriber gets the steps already in metrics.jsonl, then the steps the run announces on
/// its in-process channel as they happen (a step in both is sent once), then `end`.
#[tokio::test(flavor = "multi_thread")]
async fn run_metrics_stream_from_the_channel_after_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let state = state_in(&work);
    let app = router(state.clone(), None);
    // A run the worker does not know (not queued): its channel is fed by hand.
    let run = work.join("runs/live");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("status.json"),
        r#"{"state": "running", "error": null}"#,
    )
    .unwrap();
    let line = |step: usize| format!(r#"{{"step":{step},"stage":"clo","loss":{step}.5}}"#);
    std::fs::write(
        run.join("metrics.jsonl"),
        format!("{}\n{}\n", line(0), line(1)),
    )
    .unwrap();
    let tx = state.jobs.channel("live");
    let res = app
        .clone()
        .oneshot(get("/api/runs/live/metrics"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = tokio::spawn(axum::body::to_bytes(res.into_body(), 1 << 20));
    // Step 1 again (the file has it), then two new ones that no file holds, then the end.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for step in [1, 2, 3] {
        tx.send(runs::Live::Metric(line(step))).unwrap();
    }
    tx.send(runs::Live::End(clo_core::api::RunState::Finished))
        .unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), body)
        .await
        .expect("the stream ends after `end`")
        .unwrap()
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(
        data,
        vec![
            line(0).as_str(),
            line(1).as_str(),
            line(2).as_str(),
            line(3).as_str(),
            "\"finished\""
        ],
        "{text}"
    );
    assert!(text.contains("event: end"), "{text}");
}

/// A run cut short by a server stop (its status left `running`, checkpoints on disk) is
/// `interrupted` after a restart, resumes through `POST /api/runs/NAME/resume`, and ends with
/// the weights of the same run trained without a stop. A finished run does not resume.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_resumes_to_the_uninterrupted_weights() {
    let (_dir, work) = work_with_quads();
    let app = router(state_in(&work), None);
    let new_run = |name: &str| {
        post(
            "/api/runs",
            serde_json::json!({"name": name, "model": "qwen2", "dataset": "quads",
                               "config": {"steps": 6, "batch_size": 2, "save_every": 1}}),
        )
    };
    let (status, _) = call(&app, new_run("whole")).await;
    assert_eq!(status, StatusCode::CREATED);
    wait_for_state(&app, "whole", "finished").await;
    let (status, body) = call(&app, post("/api/runs/whole/resume", serde_json::json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, _) = call(&app, new_run("cut")).await;
    assert_eq!(status, StatusCode::CREATED);
    // Stop it after two steps, then leave it as a crash would: `running` on disk.
    loop {
        let (_, info) = call(&app, get("/api/runs/cut")).await;
        if info["steps_done"].as_u64().unwrap() >= 2 || info["state"] == "finished" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    call(&app, post("/api/runs/cut/cancel", serde_json::json!({}))).await;
    let info = wait_for_state(&app, "cut", "cancelled").await;
    let done = info["steps_done"].as_u64().unwrap();
    assert!((2..6).contains(&done), "stopped after {done} steps");
    std::fs::write(
        work.join("runs/cut/status.json"),
        r#"{"state": "running", "error": null}"#,
    )
    .unwrap();

    let restarted = router(state_in(&work), None);
    let (_, info) = call(&restarted, get("/api/runs/cut")).await;
    assert_eq!(info["state"], "interrupted");
    let (status, info) = call(
        &restarted,
        post("/api/runs/cut/resume", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let info = wait_for_state(&restarted, "cut", "finished").await;
    assert_eq!(info["steps_done"], 6);
    // The trained tensors of each run's last checkpoint.
    let weights = |run: &str| {
        let dir = work.join("runs").join(run);
        let config = clo_core::train::RunConfig::from_file(&dir.join("config.toml")).unwrap();
        let last = clo_core::train::checkpoint::RunDir::new(&dir)
            .latest_checkpoint()
            .unwrap();
        let lm =
            clo_core::train::checkpoint::load_trained(&config, &last, &Device::flex()).unwrap();
        let mut out = Vec::new();
        for t in burn::store::ModuleSnapshot::collect(&lm.model, None, None, false) {
            if t.name.contains("self_attn") {
                out.push((t.name.clone(), t.to_bytes().unwrap()));
            }
        }
        (last, out)
    };
    let ((cut_at, cut), (whole_at, whole)) = (weights("cut"), weights("whole"));
    assert_eq!(cut.len(), whole.len());
    for ((name, a), (_, b)) in cut.iter().zip(&whole) {
        assert!(
            a == b,
            "{name} differs: {} vs {}",
            cut_at.display(),
            whole_at.display()
        );
    }
    let (status, _) = call(
        &restarted,
        post("/api/runs/ghost/resume", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The `openai:` specs of `clo prepare` and `clo eval judge` work against `clo serve`:
/// clo's own client, over a real loopback socket, with the token as API key, gets the
/// reply that the API gives directly.
#[tokio::test(flavor = "multi_thread")]
async fn clos_openai_client_uses_clo_serve_as_translator_or_judge() {
    let (_d, app) = app(Some("k3y"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app.clone()).into_future());
    let spec =
        clo_core::openai::EndpointSpec::parse(&format!("openai:http://{addr}/v1#qwen2")).unwrap();
    let messages = [clo_core::openai::ChatMessage::user(
        "Translate: good morning",
    )];
    let client = |key: Option<&str>| {
        clo_core::openai::ChatClient::new(
            spec.clone(),
            clo_core::openai::ClientOptions {
                api_key: key.map(String::from),
                max_retries: 0,
                ..Default::default()
            },
        )
    };
    let (good, bad) = (client(Some("k3y")), client(None));
    let m = messages.clone();
    let (reply, refused) = tokio::task::spawn_blocking(move || {
        (good.chat(&m, 0.0, Some(10)), bad.chat(&m, 0.0, Some(10)))
    })
    .await
    .unwrap();
    let reply = reply.unwrap();
    let refused = refused.unwrap_err().to_string();
    assert!(
        refused.contains("401") || refused.contains("bearer"),
        "{refused}"
    );
    let req = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer k3y")
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::json!({"model": "qwen2", "temperature": 0.0, "max_tokens": 10,
                               "messages": [{"role": "user", "content": "Translate: good morning"}]})
            .to_string(),
        ))
        .unwrap();
    let (status, direct) = call(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(direct["choices"][0]["message"]["content"], reply.as_str());
}
