//! The OpenAI-compatible endpoints: `GET /v1/models` and `POST /v1/chat/completions`
//! (streaming as Server-Sent Events, or one JSON answer). The conversation's last user message
//! is answered in the model's chat template; models are loaded once and kept.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use clo_core::Pretrained;
use clo_core::api::ChatRequest;
use clo_core::generate::{SamplingConfig, StopReason, TextStream, fit_to_context};
use futures_util::StreamExt;
use serde_json::json;

use super::{ApiError, JsonBody, Shared, check_name};

/// The generation slots of chat completions: at most `max_generations` run, at most `queue`
/// wait; counters for `GET /api/health`.
pub struct Generations {
    limits: super::GenLimits,
    slots: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    tokens: Arc<AtomicU64>,
    next_id: AtomicU64,
}

impl Generations {
    pub fn new(limits: super::GenLimits) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_generations)),
            limits,
            waiting: AtomicUsize::new(0),
            tokens: Arc::new(AtomicU64::new(0)),
            next_id: AtomicU64::new(0),
        }
    }

    /// Waits for a slot, or refuses at once with 503 when the queue is full.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        /// Counts a waiter until it has a slot or its request is dropped.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is busy: {} generations running and {} waiting; retry shortly",
                    self.limits.max_generations, self.limits.queue
                ),
            ));
        }
        let _waiting = Waiting(&self.waiting);
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)
    }

    /// A chat completion id unique to this server process.
    fn id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        format!("chatcmpl-{t:x}{n:x}")
    }
}

/// `GET /api/health`: the server answers, and how busy its generation slots are.
pub async fn health(State(s): State<Shared>) -> Json<serde_json::Value> {
    let g = &s.gens;
    Json(json!({
        "status": "ok",
        // A slot is held from its request's turn until its generation has ended.
        "generations_running": g.limits.max_generations - g.slots.available_permits(),
        "generations_waiting": g.waiting.load(Ordering::SeqCst),
        "max_generations": g.limits.max_generations,
        "generation_queue": g.limits.queue,
        "tokens_generated": g.tokens.load(Ordering::Relaxed),
    }))
}

#[derive(Default)]
pub struct Models {
    loaded: Mutex<HashMap<String, Arc<Pretrained>>>,
}

/// Loads (once) the model `name`: a model directory by name, or `run:NAME` (a run's best
/// weights, else its last checkpoint).
fn load(s: &Shared, name: &str) -> Result<Arc<Pretrained>, ApiError> {
    if let Some(m) = s.chat.loaded.lock().expect("models lock").get(name) {
        return Ok(m.clone());
    }
    let lm = if let Some(run) = name.strip_prefix("run:") {
        check_name("run", run)?;
        let dir = s.workdir.join("runs").join(run);
        let config = clo_core::train::RunConfig::from_file(&dir.join("config.toml"))
            .map_err(|_| ApiError::not_found(format!("no trained run {run:?}")))?;
        let weights = clo_core::export::resolve_weights(&dir, "best")?;
        clo_core::train::checkpoint::load_trained(&config, &weights, &s.device)?
    } else {
        Pretrained::load(&s.model_dir(name)?, &s.device)?
    };
    let lm = Pretrained {
        model: lm.model.store_frozen_in(s.dtype),
        ..lm
    };
    let lm = Arc::new(lm);
    s.chat
        .loaded
        .lock()
        .expect("models lock")
        .insert(name.to_string(), lm.clone());
    Ok(lm)
}

pub async fn v1_models(State(s): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(models) = super::models::list(State(s)).await?;
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            let mut v = json!({"id": m.name, "object": "model", "created": 0, "owned_by": "clo"});
            // A model whose files do not read says why (clients that do not know the field
            // ignore it).
            if let Some(e) = &m.error {
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

fn sampling(req: &ChatRequest) -> Result<SamplingConfig, ApiError> {
    let c = SamplingConfig::from_request(req.temperature, req.top_p, req.seed, req.max_tokens)?;
    if c.max_new_tokens > 4096 {
        return Err(ApiError::bad("max_tokens must be 1..=4096"));
    }
    Ok(c)
}

pub async fn completions(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    if !req.messages.iter().any(|m| m.role == "user") {
        return Err(ApiError::bad("messages holds no user message"));
    }
    if let Some(m) = req
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(ApiError::bad(format!(
            "message role {:?}: use system, user or assistant",
            m.role
        )));
    }
    let mut config = sampling(&req)?;
    let lm = {
        let s = s.clone();
        let name = req.model.clone();
        tokio::task::spawn_blocking(move || load(&s, &name))
            .await
            .map_err(ApiError::internal)??
    };
    let conversation: Vec<(&str, &str)> = req
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    let prompt = lm.tokenizer.chat_ids(&conversation)?;
    // Refused before any forward pass; the answer is capped to what the context leaves.
    config.max_new_tokens = fit_to_context(
        "messages",
        prompt.len(),
        config.max_new_tokens,
        lm.context(),
        s.gens.limits.max_prompt_tokens,
    )?;
    let permit = s.gens.slot().await?;
    let id = s.gens.id();
    let model = req.model.clone();
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |delta: serde_json::Value, reason: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
            .to_string()
        }
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stream = req.stream;
    // The channel is the cancel signal: its receiver lives in this request's future (a whole
    // answer) or its event stream (streaming), so a client that goes away closes it, and the
    // generation stops at the next token.
    let tokens = s.gens.tokens.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let _slot = permit;
        let (text, stop, n) = answer(
            &lm,
            &prompt,
            &config,
            |delta| {
                if stream {
                    let _ = tx.send(chunk(json!({"content": delta}), None));
                }
            },
            || {
                tokens.fetch_add(1, Ordering::Relaxed);
                if tx.is_closed() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        if stop == StopReason::Cancelled {
            tracing::info!("chat completion stopped: the client went away");
        } else if stream {
            let _ = tx.send(chunk(json!({}), Some(stop.finish_reason())));
            let _ = tx.send("[DONE]".into());
        }
        (text, stop, n)
    });
    if stream {
        let events = futures_util::stream::once(async move { first })
            .chain(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let events = events.map(|data| Ok::<_, Infallible>(Event::default().data(data)));
        return Ok(Sse::new(events).into_response());
    }
    let (text, stop, n) = answer.await.map_err(ApiError::internal)?;
    drop(rx);
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": stop.finish_reason()}],
        "usage": {"prompt_tokens": n.0, "completion_tokens": n.1, "total_tokens": n.0 + n.1},
    }))
    .into_response())
}

/// Generates the answer to `prompt`, calling `on_text` with each new piece of text (see
/// [`TextStream`]). Returns the text, why it stopped, and (prompt, completion) token counts.
/// `on_token` is asked after every token whether to go on.
fn answer(
    lm: &Pretrained,
    prompt: &[u32],
    config: &SamplingConfig,
    mut on_text: impl FnMut(String),
    mut on_token: impl FnMut() -> ControlFlow<()>,
) -> (String, StopReason, (usize, usize)) {
    let mut stream = TextStream::default();
    let out = lm.generate_until(prompt, config, |t| {
        let flow = on_token();
        if let Some(piece) = stream.push(&lm.tokenizer, t) {
            on_text(piece);
        }
        flow
    });
    let (text, rest) = stream.finish(&lm.tokenizer, &out.ids);
    if let Some(piece) = rest {
        on_text(piece);
    }
    (text, out.stop, (prompt.len(), out.ids.len()))
}
