//! `api.rs`: the typed client of `clo serve`'s API: JSON calls, and Server-Sent Events read through
//! `fetch` (so the bearer token header and POST bodies work, unlike `EventSource`).

use futures_util::StreamExt;
use gloo_net::http::{Request, RequestBuilder, Response};
use gloo_storage::{LocalStorage, Storage};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sse::{SseEvent, SseParser};
use crate::types::{
    ChatRequest, CheckpointInfo, DatasetInfo, DatasetPage, DeviceList, ErrorBody, EvalReport,
    ExportRequest, ExportResponse, LangIdRequest, LangIdResponse, ModelInfo, RunInfo, RunRequest,
};

const TOKEN_KEY: &str = "clo-token";

/// The API token kept in the browser (for a `clo serve --token`).
pub fn token() -> Option<String> {
    LocalStorage::get::<String>(TOKEN_KEY)
        .ok()
        .filter(|t| !t.is_empty())
}

pub fn set_token(token: &str) {
    if token.is_empty() {
        LocalStorage::delete(TOKEN_KEY);
    } else {
        let _ = LocalStorage::set(TOKEN_KEY, token);
    }
}

fn authorized(b: RequestBuilder) -> RequestBuilder {
    match token() {
        Some(t) => b.header("Authorization", &format!("Bearer {t}")),
        None => b,
    }
}

/// The server's message for a failed call.
async fn error_of(resp: Response) -> String {
    let status = resp.status();
    match resp.json::<ErrorBody>().await {
        Ok(b) => b.error.message,
        Err(_) => format!("the server answered HTTP {status}"),
    }
}

async fn finish<T: DeserializeOwned>(resp: Result<Response, gloo_net::Error>) -> Result<T, String> {
    let resp = resp.map_err(|e| format!("cannot reach clo serve: {e}"))?;
    if !resp.ok() {
        return Err(error_of(resp).await);
    }
    resp.json::<T>()
        .await
        .map_err(|e| format!("an answer the UI cannot read: {e}"))
}

/// `GET path` as JSON.
pub async fn get_json<T: DeserializeOwned>(path: &str) -> Result<T, String> {
    get(path).await
}

async fn get<T: DeserializeOwned>(path: &str) -> Result<T, String> {
    finish(authorized(Request::get(path)).send().await).await
}

async fn post<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, String> {
    let req = authorized(Request::post(path))
        .json(body)
        .map_err(|e| e.to_string())?;
    finish(req.send().await).await
}

/// Reads a Server-Sent Events answer (GET, or POST with `body`), calling `on_event` for each
/// event until it returns `false` or the stream ends.
async fn stream<B: Serialize>(
    path: &str,
    body: Option<&B>,
    abort: Option<&web_sys::AbortSignal>,
    mut on_event: impl FnMut(SseEvent) -> bool,
) -> Result<(), String> {
    let builder = authorized(match body {
        Some(_) => Request::post(path),
        None => Request::get(path),
    })
    .header("Accept", "text/event-stream")
    .abort_signal(abort);
    let resp = match body {
        Some(b) => builder.json(b).map_err(|e| e.to_string())?.send().await,
        None => builder.send().await,
    }
    .map_err(|e| format!("cannot reach clo serve: {e}"))?;
    if !resp.ok() {
        return Err(error_of(resp).await);
    }
    let raw = resp.body().ok_or("the answer has no body")?;
    let mut chunks = wasm_streams::ReadableStream::from_raw(raw).into_stream();
    let mut parser = SseParser::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| format!("the stream broke: {e:?}"))?;
        let bytes = js_sys::Uint8Array::new(&chunk).to_vec();
        for event in parser.push(&bytes) {
            if !on_event(event) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}

// One function per endpoint of `clo serve`: the pages build no URLs.

/// `GET /api/models`.
pub async fn models() -> Result<Vec<ModelInfo>, String> {
    get("/api/models").await
}

/// `GET /api/datasets`.
pub async fn datasets() -> Result<Vec<DatasetInfo>, String> {
    get("/api/datasets").await
}

/// `GET /api/datasets/NAME?offset&limit`: a page of a dataset's quadruples.
pub async fn dataset_page(name: &str, offset: usize, limit: usize) -> Result<DatasetPage, String> {
    get(&format!(
        "/api/datasets/{}?offset={offset}&limit={limit}",
        seg(name)
    ))
    .await
}

/// `PUT /api/datasets/NAME`: a quadruple JSONL file, checked by the server before it is kept.
pub async fn upload_dataset(
    name: &str,
    bytes: &[u8],
    replace: bool,
) -> Result<DatasetInfo, String> {
    let path = format!(
        "/api/datasets/{}{}",
        seg(name),
        if replace { "?replace=true" } else { "" }
    );
    let body = js_sys::Uint8Array::from(bytes);
    let req = authorized(Request::put(&path))
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .map_err(|e| e.to_string())?;
    finish(req.send().await).await
}

/// `GET /api/settings`: every setting a run takes (the new-run form is built from it).
pub async fn settings() -> Result<Vec<clo_core::api::SettingInfo>, String> {
    get("/api/settings").await
}

/// `GET /api/devices`.
pub async fn devices() -> Result<DeviceList, String> {
    get("/api/devices").await
}

/// `GET /api/runs`.
pub async fn runs() -> Result<Vec<RunInfo>, String> {
    get("/api/runs").await
}

/// `POST /api/runs`: creates (and queues) a run.
pub async fn create_run(request: &RunRequest) -> Result<RunInfo, String> {
    post("/api/runs", request).await
}

/// `GET /api/runs/NAME`.
pub async fn run(name: &str) -> Result<RunInfo, String> {
    get(&format!("/api/runs/{}", seg(name))).await
}

/// `POST /api/runs/NAME/cancel`.
pub async fn cancel_run(name: &str) -> Result<RunInfo, String> {
    post(&format!("/api/runs/{}/cancel", seg(name)), &()).await
}

/// `POST /api/runs/NAME/resume`: continues an interrupted run from its newest checkpoint.
pub async fn resume_run(name: &str) -> Result<RunInfo, String> {
    post(&format!("/api/runs/{}/resume", seg(name)), &()).await
}

/// `GET /api/runs/NAME/metrics` (Server-Sent Events): each metrics line, then the live ones.
pub async fn run_metrics(
    name: &str,
    abort: Option<&web_sys::AbortSignal>,
    on_event: impl FnMut(SseEvent) -> bool,
) -> Result<(), String> {
    stream::<()>(
        &format!("/api/runs/{}/metrics", seg(name)),
        None,
        abort,
        on_event,
    )
    .await
}

/// `GET /api/runs/NAME/checkpoints`.
pub async fn checkpoints(name: &str) -> Result<Vec<CheckpointInfo>, String> {
    get(&format!("/api/runs/{}/checkpoints", seg(name))).await
}

/// `POST /api/runs/NAME/export`.
pub async fn export(name: &str, request: &ExportRequest) -> Result<ExportResponse, String> {
    post(&format!("/api/runs/{}/export", seg(name)), request).await
}

/// `GET /api/evals/report`.
pub async fn eval_report() -> Result<EvalReport, String> {
    get("/api/evals/report").await
}

/// `POST /api/langid`.
pub async fn langid(text: String) -> Result<LangIdResponse, String> {
    post("/api/langid", &LangIdRequest { text }).await
}

/// `POST /v1/chat/completions` with `stream: true` (Server-Sent Events of chunks).
pub async fn chat_stream(
    request: &ChatRequest,
    abort: Option<&web_sys::AbortSignal>,
    on_event: impl FnMut(SseEvent) -> bool,
) -> Result<(), String> {
    stream("/v1/chat/completions", Some(request), abort, on_event).await
}
