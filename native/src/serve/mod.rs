//! `clo serve`: the JSON API (models, datasets, runs with live metrics, evals), an
//! OpenAI-compatible `/v1`, and the built web UI, behind one axum router.
//!
//! Work directory layout: `WORKDIR/models/NAME/` (model directories), `WORKDIR/datasets/NAME.jsonl`
//! (quadruples, with `NAME.summary.json` from `clo prepare`), `WORKDIR/runs/NAME/` (`clo train`
//! runs plus `request.json` and `status.json`).

mod chat;
mod datasets;
mod evals;
pub mod guard;
mod langid;
mod listen;
mod models;
mod runs;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use burn::tensor::Device;
use clap::Args;
use clo_core::api::{ErrorBody, ErrorDetail};
use clo_core::eval::langid::LanguageIdentifier;

use crate::device::{DEVICE_HELP, parse_device};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to bind; anything but loopback requires --token.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Bearer token every API call must carry (`Authorization: Bearer T`).
    #[arg(long, env = "CLO_TOKEN")]
    token: Option<String>,
    /// Work directory: models/, datasets/, runs/ (created if missing).
    #[arg(long, default_value = "clo-work")]
    workdir: PathBuf,
    /// Model directories to offer besides WORKDIR/models/ (named after their directory).
    #[arg(long)]
    model: Vec<PathBuf>,
    /// The built web UI (Trunk's dist/) to serve at /.
    #[arg(long, default_value = "dist")]
    web: PathBuf,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Storage of the chat models' weights: f32, f16, bf16 (half the memory; products in that
    /// type, the rest in f32) or auto (bf16/f16 where a GPU offers it, else f32). Runs use
    /// their own `dtype` setting.
    #[arg(long, default_value = "f32", value_name = "DTYPE")]
    dtype: clo_core::load::models::Precision,
    /// Also offer clo's built-in toy model (`toy`) and 800 toy quadruples (dataset `toy`),
    /// written into WORKDIR when missing: a UI to try with no download.
    #[arg(long)]
    toy: bool,
    /// Chat completions generated at once; more wait in the queue.
    #[arg(long, default_value_t = 2)]
    max_generations: usize,
    /// Chat completions that may wait for a generation slot; beyond that, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    generation_queue: usize,
    /// Refuse chat prompts of more tokens than this (always: prompts that fill the model's
    /// context), with 400.
    #[arg(long)]
    max_prompt_tokens: Option<usize>,
    /// Another host name the server answers to (repeatable). Requests whose Host header is
    /// not the bound address, localhost or such a name are refused (421): this stops
    /// DNS-rebinding pages from reaching a loopback server.
    #[arg(long, value_name = "NAME")]
    allowed_host: Vec<String>,
    /// Another origin (`https://app.example:8443`) whose pages may send requests that change
    /// something (POST, PUT, DELETE); by default only the server's own pages may (403 for the
    /// others). Repeatable.
    #[arg(long, value_name = "ORIGIN")]
    allowed_origin: Vec<String>,
    /// Connections open at once; more are closed at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers, and the longest wait for the next
    /// piece of its body; slower requests are dropped.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    read_timeout: u64,
}

/// Languages the playground's reply badges can name (besides `toy`): clo's lingua set.
const BADGE_LANGS: [&str; 7] = ["en", "zh", "de", "ko", "id", "sw", "yo"];

/// Largest request body (a run config or a chat; datasets are not uploaded through the API).
pub const BODY_LIMIT: usize = 1 << 20;

/// Limits of chat generation: slots, queue, prompt length.
#[derive(Debug, Clone)]
pub struct GenLimits {
    pub max_generations: usize,
    pub queue: usize,
    pub max_prompt_tokens: Option<usize>,
}

impl Default for GenLimits {
    fn default() -> Self {
        Self {
            max_generations: 2,
            queue: 64,
            max_prompt_tokens: None,
        }
    }
}

pub struct AppState {
    pub workdir: PathBuf,
    pub models: BTreeMap<String, PathBuf>,
    pub token: Option<String>,
    pub device: Device,
    /// The `--device` spec (what `GET /api/devices` names as the default).
    pub device_spec: String,
    /// How chat models' weights are stored (`--dtype`, resolved for `device`).
    pub dtype: burn::tensor::FloatDType,
    pub jobs: runs::Jobs,
    pub chat: chat::Models,
    pub gens: chat::Generations,
    /// Language identifiers by language set (lingua's are slow to build), for dataset pages.
    langids: std::sync::Mutex<BTreeMap<Vec<String>, Option<SharedLangId>>>,
}

pub type Shared = Arc<AppState>;

type SharedLangId = Arc<dyn LanguageIdentifier>;

/// An API error: status and message, rendered as [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad(m: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, m.into())
    }
    /// A fault of the server, not of the request: 500, with an id that the log's line for it
    /// carries (the whole error is logged; the answer says what failed and the id).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = format!(
            "E{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        tracing::error!(id = %id, error = %format!("{e:#}"), "internal error");
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e:#} (error id {id}; the server's log has it)"),
        )
    }
}

/// A core error answers with the status of its kind: not found 404, invalid input 400,
/// unsupported 422, a lock held elsewhere 409, another busy or exhausted resource 503 (with
/// Retry-After), internal 500.
impl From<clo_core::CoreError> for ApiError {
    fn from(e: clo_core::CoreError) -> Self {
        use clo_core::error::ErrorKind;
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::Unsupported => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Resource if matches!(e, clo_core::CoreError::Locked { .. }) => {
                StatusCode::CONFLICT
            }
            ErrorKind::Resource => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => return ApiError::internal(e),
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.0 {
            StatusCode::BAD_REQUEST => "invalid_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::MISDIRECTED_REQUEST => "misdirected_request",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::UNPROCESSABLE_ENTITY => "unsupported",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.1,
                kind: kind.into(),
            },
        };
        let mut res = (self.0, Json(body)).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        res
    }
}

pub type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON body whose rejections (bad JSON, wrong fields, too large) are [`ApiError`]s.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => {
                let status = match &rejection {
                    JsonRejection::BytesRejection(_) => rejection.status(),
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(ApiError(status, rejection.body_text()))
            }
        }
    }
}

/// Query parameters whose rejections (a negative number, a word for a number) are
/// [`ApiError`]s with the JSON error shape.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for QueryParams<T>
{
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|r| ApiError::bad(r.body_text()))
    }
}

/// Error bodies name no path of the server's file system: the work directory and the `--model`
/// directories are cut to names relative to them.
async fn hide_paths(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if res.status().as_u16() < 400 {
        return res;
    }
    let (parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return ApiError::internal("error body unreadable").into_response();
    };
    let text = state.hide_paths_in(&String::from_utf8_lossy(&bytes));
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(text))
}

/// A name used in a path: letters, digits, `-`, `_`, `.`; not starting with `.`; at most 100.
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "invalid {what} name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
        )))
    }
}

async fn auth(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send `Authorization: Bearer <token>` (the --token of clo serve)".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

impl AppState {
    pub fn new(
        workdir: PathBuf,
        model_dirs: &[PathBuf],
        token: Option<String>,
        device_spec: &str,
        dtype: clo_core::load::models::Precision,
        limits: GenLimits,
    ) -> anyhow::Result<Shared> {
        let device = parse_device(device_spec)?;
        let dtype = dtype.resolve(&device).context("--dtype")?;
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            bail!(
                "--token is empty: give a non-empty secret (or leave --token and CLO_TOKEN unset on loopback)"
            );
        }
        if limits.max_generations == 0 {
            bail!("--max-generations must be at least 1");
        }
        for sub in ["models", "datasets", "runs"] {
            let d = workdir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut models = BTreeMap::new();
        for dir in model_dirs {
            let gguf = clo_core::gguf::is_gguf(dir) && dir.is_file();
            // A GGUF file is served under its name without the extension.
            let name = if gguf {
                dir.file_stem()
            } else {
                dir.file_name()
            }
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("--model {}: not a directory name", dir.display()))?;
            if !gguf && !dir.join("config.json").is_file() {
                bail!(
                    "--model {}: no config.json; give a Hugging Face model directory or a .gguf file",
                    dir.display()
                );
            }
            models.insert(name, dir.clone());
        }
        let state = Arc::new(AppState {
            jobs: runs::Jobs::default(),
            chat: chat::Models::default(),
            gens: chat::Generations::new(limits),
            langids: Default::default(),
            workdir,
            models,
            token,
            device,
            device_spec: device_spec.to_string(),
            dtype,
        });
        Ok(state)
    }

    /// `text` with the server's paths cut to names relative to the work directory or a
    /// `--model` (in JSON a path may appear escaped, backslashes on Windows: both forms go).
    pub fn hide_paths_in(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (root, shown) in self.path_aliases() {
            let escaped = serde_json::to_string(&root).unwrap_or_default();
            let escaped = escaped.trim_matches('"');
            for form in [root.as_str(), escaped] {
                if !form.is_empty() {
                    text = text
                        .replace(&format!("{form}/"), &shown)
                        .replace(form, &shown);
                }
            }
        }
        text
    }

    /// Server paths as they may appear in messages, longest first, with what replaces them.
    fn path_aliases(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut add = |p: &Path, shown: String| {
            out.push((p.display().to_string(), shown.clone()));
            if let Ok(c) = p.canonicalize() {
                out.push((c.display().to_string(), shown.clone()));
            }
            if let Ok(a) = std::path::absolute(p) {
                out.push((a.display().to_string(), shown));
            }
        };
        for (name, dir) in &self.models {
            add(dir, format!("models/{name}/"));
        }
        add(&self.workdir, String::new());
        out.retain(|(root, _)| !root.is_empty() && root != "." && root != "/");
        out.sort_by_key(|(root, _)| std::cmp::Reverse(root.len()));
        out.dedup();
        out
    }

    /// The (cached) language identifier for a set of languages.
    fn langid(&self, langs: &[String]) -> Option<SharedLangId> {
        self.langids
            .lock()
            .expect("langid lock")
            .entry(langs.to_vec())
            .or_insert_with(|| langid::langid_for(langs))
            .clone()
    }

    /// A model directory by API name: `--model` dirs, `WORKDIR/models/NAME`.
    pub fn model_dir(&self, name: &str) -> Result<PathBuf, ApiError> {
        if let Some(d) = self.models.get(name) {
            return Ok(d.clone());
        }
        check_name("model", name)?;
        let d = self.workdir.join("models").join(name);
        let file = self.workdir.join("models").join(format!("{name}.gguf"));
        if d.join("config.json").is_file() {
            Ok(d)
        } else if file.is_file() {
            Ok(file)
        } else {
            Err(ApiError::not_found(format!(
                "no model {name:?}; GET /api/models lists them"
            )))
        }
    }

    pub fn dataset_path(&self, name: &str) -> Result<PathBuf, ApiError> {
        check_name("dataset", name)?;
        let p = self.workdir.join("datasets").join(format!("{name}.jsonl"));
        if p.is_file() {
            Ok(p)
        } else {
            Err(ApiError::not_found(format!(
                "no dataset {name:?}; GET /api/datasets lists them"
            )))
        }
    }
}

/// The whole application behind the browser guard of a loopback server ([`guard::Guard`]),
/// with the default body read timeout (the handler tests' application).
#[cfg(test)]
pub fn router(state: Shared, web_dir: Option<&Path>) -> Router {
    router_with(
        state,
        web_dir,
        guard::Guard::loopback(),
        std::time::Duration::from_secs(10),
    )
}

/// [`app`] behind `guard` (Host, Origin and content-type checks), each wait for a piece of a
/// request body bounded by `body_timeout`.
pub fn router_with(
    state: Shared,
    web_dir: Option<&Path>,
    guard: guard::Guard,
    body_timeout: std::time::Duration,
) -> Router {
    app(state, web_dir)
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::new(guard),
            guard::guard,
        ))
}

/// The whole application: API, `/v1`, and the web UI from `web_dir` (when built).
fn app(state: Shared, web_dir: Option<&Path>) -> Router {
    let api = Router::new()
        .route("/api/models", get(models::list))
        .route("/api/models/{name}", get(models::inspect))
        .route("/api/models/{name}/files", get(models::files))
        .route("/api/models/{name}/files/{file}", get(models::file))
        .route("/api/datasets", get(datasets::list))
        .route(
            "/api/datasets/{name}",
            get(datasets::page)
                .put(datasets::upload)
                .layer(DefaultBodyLimit::max(datasets::UPLOAD_LIMIT)),
        )
        .route("/api/datasets/{name}/file", get(datasets::file))
        .route("/api/runs", get(runs::list).post(runs::create))
        .route("/api/runs/{name}", get(runs::status))
        .route("/api/runs/{name}/cancel", post(runs::cancel))
        .route("/api/runs/{name}/resume", post(runs::resume))
        .route("/api/runs/{name}/metrics", get(runs::metrics))
        .route("/api/runs/{name}/checkpoints", get(runs::checkpoints))
        .route("/api/runs/{name}/export", post(runs::export))
        .route("/api/evals", get(evals::list))
        .route("/api/evals/report", get(evals::report))
        .route("/api/run-config", get(runs::defaults))
        .route("/api/settings", get(runs::settings))
        .route("/api/devices", get(runs::devices))
        .route("/api/langid", post(langid::detect))
        .route("/v1/models", get(chat::v1_models))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/api/health", get(chat::health))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that HTTP method".into(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), hide_paths))
        .with_state(state);
    let not_found = || async { ApiError::not_found("no such endpoint") };
    let app = api
        .route("/api/{*rest}", any(not_found))
        .route("/v1/{*rest}", any(not_found));
    match web_dir {
        Some(dir) if dir.join("index.html").is_file() => app.fallback_service(
            tower_http::services::ServeDir::new(dir)
                .fallback(tower_http::services::ServeFile::new(dir.join("index.html"))),
        ),
        _ => app.fallback(not_found),
    }
}

/// Runs file, model and language-ID work on tokio's blocking pool, off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
        .map(Json)
}

pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let ip: IpAddr = args
        .host
        .parse()
        .with_context(|| format!("--host {}: not an IP address", args.host))?;
    if args.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        bail!(
            "--token (or CLO_TOKEN) is empty: give a non-empty secret, or leave both unset on loopback"
        );
    }
    if args.max_connections == 0 || args.read_timeout == 0 {
        bail!("--max-connections and --read-timeout must be at least 1");
    }
    if !ip.is_loopback() && args.token.is_none() {
        bail!(
            "--host {ip} is reachable from other machines: give --token (or CLO_TOKEN) so that every API call needs it"
        );
    }
    if args.toy {
        clo_core::toy::shipped::write_toy_kit(
            &args.workdir.join("models").join("toy"),
            &args.workdir.join("datasets").join("toy.jsonl"),
            800,
        )
        .context("writing the toy model and dataset")?;
    }
    let state = AppState::new(
        args.workdir.clone(),
        &args.model,
        args.token.clone(),
        &args.device,
        args.dtype,
        GenLimits {
            max_generations: args.max_generations,
            queue: args.generation_queue,
            max_prompt_tokens: args.max_prompt_tokens,
        },
    )?;
    // The training worker: re-queues queued runs, marks interrupted ones, trains in order.
    runs::start(&state)?;
    let web = args
        .web
        .join("index.html")
        .is_file()
        .then_some(args.web.as_path());
    if web.is_none() {
        eprintln!(
            "no web UI at {} (build it with `trunk build --release` in the repository root); serving the API only",
            args.web.display()
        );
    }
    let read_timeout = std::time::Duration::from_secs(args.read_timeout);
    let app = router_with(
        state,
        web,
        guard::Guard::new(ip, &args.allowed_host, &args.allowed_origin),
        read_timeout,
    );
    let addr = SocketAddr::new(ip, args.port);
    let limits = listen::ConnLimits {
        max_connections: args.max_connections,
        header_timeout: read_timeout,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!("clo serve: http://{}", listener.local_addr()?);
        listen::serve(listener, app, limits, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
    })
}
