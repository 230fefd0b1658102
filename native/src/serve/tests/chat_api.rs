//! `/v1`: chat completions, their queue and the OpenAI client of clo itself.

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::*;

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
