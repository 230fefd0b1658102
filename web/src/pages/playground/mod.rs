//! Playground: chat with a model, the reply streamed token by token; side by side, the same
//! prompt goes to two models (say the base model and a CLO run), each reply with a badge of the
//! language it is in. Each pane runs on an engine: the server (`/v1/chat/completions`) or this
//! browser (clo's engine on WebGPU, [`crate::engine`]), which shows its tokens/s.

mod chat_pane;

use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::api;
use crate::pages::error_line;
use crate::sse::chat_delta;
use crate::types::{ChatMessage, ChatRequest};
use chat_pane::ChatPane;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Turn {
    role: &'static str,
    content: String,
    /// The reply's language once it is complete (`Some(None)`: undetermined).
    lang: Option<Option<String>>,
    done: bool,
    /// Stream events the reply was put together from.
    pieces: usize,
}

#[derive(Clone, Copy)]
pub(super) struct Pane {
    model: RwSignal<String>,
    /// `server` or `browser`.
    engine: RwSignal<String>,
    turns: RwSignal<Vec<Turn>>,
    error: RwSignal<Option<String>>,
    /// The browser engine's download progress and speed.
    status: RwSignal<Option<String>>,
}

impl Pane {
    fn new() -> Self {
        Pane {
            model: RwSignal::new(String::new()),
            engine: RwSignal::new("server".into()),
            turns: RwSignal::new(Vec::new()),
            error: RwSignal::new(None),
            status: RwSignal::new(None),
        }
    }

    /// Sends `prompt` after the conversation so far and streams the reply into the last turn.
    fn send(self, prompt: String, temperature: f64, max_tokens: usize) {
        let model = self.model.get_untracked();
        let mut messages: Vec<ChatMessage> = self.turns.with_untracked(|t| {
            t.iter()
                .filter(|t| t.done)
                .map(|t| ChatMessage {
                    role: t.role.into(),
                    content: t.content.clone(),
                })
                .collect()
        });
        messages.push(ChatMessage {
            role: "user".into(),
            content: prompt.clone(),
        });
        self.error.set(None);
        self.turns.update(|t| {
            t.push(Turn {
                role: "user",
                content: prompt,
                lang: None,
                done: true,
                pieces: 0,
            });
            t.push(Turn {
                role: "assistant",
                content: String::new(),
                lang: None,
                done: false,
                pieces: 0,
            });
        });
        let request = ChatRequest {
            model,
            messages,
            stream: true,
            temperature: Some(temperature),
            top_p: None,
            max_tokens: Some(max_tokens),
            seed: None,
        };
        let turns = self.turns;
        let error = self.error;
        if self.engine.get_untracked() == "browser" {
            let status = self.status;
            spawn_local(async move {
                let result = in_browser(&request, turns, status).await;
                if let Err(e) = result {
                    error.try_set(Some(e));
                }
                finish_turn(turns).await;
            });
            return;
        }
        spawn_local(async move {
            let result = api::chat_stream(&request, None, |ev| match chat_delta(&ev.data) {
                Ok(Some(text)) => {
                    append(turns, &text);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    error.try_set(Some(e));
                    false
                }
            })
            .await;
            if let Err(e) = result {
                error.try_set(Some(e));
            }
            finish_turn(turns).await;
        });
    }

    fn busy(self) -> bool {
        self.turns.with(|t| t.last().is_some_and(|l| !l.done))
    }
}

/// Appends a piece of the reply to the last turn.
fn append(turns: RwSignal<Vec<Turn>>, text: &str) {
    if text.is_empty() {
        return;
    }
    turns.try_update(|t| {
        if let Some(last) = t.last_mut() {
            last.content.push_str(text);
            last.pieces += 1;
        }
    });
}

/// Marks the reply complete, with the badge of its language.
async fn finish_turn(turns: RwSignal<Vec<Turn>>) {
    let text = turns
        .try_with_untracked(|t| t.last().map(|l| l.content.clone()))
        .flatten()
        .unwrap_or_default();
    if text.is_empty() {
        // Nothing came back (the error line says why): no empty answer bubble, and the
        // unanswered question leaves the history, so the next one is not sent after it.
        turns.try_update(|t| {
            t.pop();
            if t.last().is_some_and(|l| l.role == "user") {
                t.pop();
            }
        });
        return;
    }
    let lang = api::langid(text).await.map(|r| r.lang).unwrap_or(None);
    turns.try_update(|t| {
        if let Some(last) = t.last_mut() {
            last.done = true;
            last.lang = Some(lang);
        }
    });
}

/// Answers on this browser's GPU: loads the pane's model into the engine first when it holds
/// another (with the download's progress), then streams the reply and shows tokens/s.
async fn in_browser(
    request: &ChatRequest,
    turns: RwSignal<Vec<Turn>>,
    status: RwSignal<Option<String>>,
) -> Result<(), String> {
    let current = crate::engine::loaded().map(|l| l.name.clone());
    if current.as_deref() != Some(request.model.as_str()) {
        status.try_set(Some(format!(
            "loading {} into this browser…",
            request.model
        )));
        let info = crate::engine::load(&request.model, None, |done, total| {
            status.try_set(Some(format!(
                "downloading {:.1} / {:.1} MB",
                done / 1e6,
                total / 1e6
            )));
        })
        .await?;
        status.try_set(Some(format!(
            "{} on WebGPU: {:.1}M parameters",
            info.name,
            info.parameters as f64 / 1e6
        )));
    }
    let call = crate::engine::ChatCall {
        messages: request.messages.clone(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed,
        stream: true,
    };
    let started = js_sys::Date::now();
    let answer = crate::engine::chat(&call, |piece| append(turns, piece)).await?;
    let seconds = (js_sys::Date::now() - started) / 1000.0;
    status.try_set(Some(format!(
        "this browser (WebGPU): {} tokens in {seconds:.1} s, {:.1} tokens/s",
        answer.ids.len(),
        answer.ids.len() as f64 / seconds.max(1e-3)
    )));
    Ok(())
}

#[component]
pub fn PlaygroundPage() -> impl IntoView {
    let models = LocalResource::new(api::models);
    // A model fine-tuned on the Train in browser page lives in this browser only.
    let tuned = crate::engine::loaded()
        .filter(|l| l.tuned.is_some())
        .map(|l| l.name.clone());
    let extra = tuned.clone();
    let names = Signal::derive(move || {
        let mut list: Vec<String> = models
            .get()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.name)
            .collect();
        if let Some(t) = &extra
            && !list.contains(t)
        {
            list.insert(0, t.clone());
        }
        list
    });
    let a = Pane::new();
    let b = Pane::new();
    if let Some(t) = tuned {
        a.model.set(t);
        a.engine.set("browser".into());
    }
    let side_by_side = RwSignal::new(false);
    let prompt = RwSignal::new(String::new());
    let temperature = RwSignal::new("0".to_string());
    let max_tokens = RwSignal::new("64".to_string());
    let error = RwSignal::new(None::<String>);
    Effect::new(move |_| {
        let list = names.get();
        if a.model.get_untracked().is_empty()
            && let Some(first) = list.first()
        {
            a.model.set(first.clone());
        }
        if b.model.get_untracked().is_empty()
            && let Some(other) = list.get(1).or(list.first())
        {
            b.model.set(other.clone());
        }
    });
    let busy = move || a.busy() || (side_by_side.get() && b.busy());
    let send = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let text = prompt.get_untracked().trim().to_string();
        if text.is_empty() {
            return;
        }
        let Ok(temp) = temperature.get_untracked().trim().parse::<f64>() else {
            error.set(Some(
                "Temperature: give a number (0 answers greedily)".into(),
            ));
            return;
        };
        let Ok(max) = max_tokens.get_untracked().trim().parse::<usize>() else {
            error.set(Some("Max tokens: give a whole number".into()));
            return;
        };
        error.set(None);
        a.send(text.clone(), temp, max);
        if side_by_side.get_untracked() {
            b.send(text, temp, max);
        }
        prompt.set(String::new());
    };
    view! {
        <h1>"Playground"</h1>
        <form class="chat-controls" on:submit=send>
            <label class="check">
                <input type="checkbox" name="side_by_side" bind:checked=side_by_side />
                " Side by side"
            </label>
            <label>"Temperature " <input name="temperature" size="4" bind:value=temperature /></label>
            <label>"Max tokens " <input name="max_tokens" size="4" bind:value=max_tokens /></label>
            <textarea name="prompt" rows="2" placeholder="Ask something…" bind:value=prompt></textarea>
            <button type="submit" disabled=busy>"Send"</button>
        </form>
        {error_line(move || error.get())}
        <div class=move || if side_by_side.get() { "panes two" } else { "panes" }>
            <ChatPane which="a" pane=a names=names />
            {move || side_by_side.get().then(|| view! { <ChatPane which="b" pane=b names=names /> })}
        </div>
    }
}
