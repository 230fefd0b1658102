//! The handler tests of `clo serve`, by resource; the helpers every file uses are here.

mod chat_api;
mod file_api;
mod run_api;

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
