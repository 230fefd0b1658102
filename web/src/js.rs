//! `window.clo`, the JavaScript API of every page (README has an example). `index.html`
//! defines `window.clo` (promises, and the async iterator of a streamed chat); it calls the
//! functions this module hands it through `window.__cloReady`.

use js_sys::{Function, JSON, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::engine;

fn to_js(value: &serde_json::Value) -> Result<JsValue, JsValue> {
    JSON::parse(&value.to_string())
}

fn err(message: String) -> JsValue {
    js_sys::Error::new(&message).into()
}

/// `load(source, options)`: `options.onProgress(done, total)` and `options.maxBufferBytes`;
/// resolves to `{name, parameters, vocab_size, device}`.
fn load(source: String, options: JsValue) -> Promise {
    future_to_promise(async move {
        let field = |name: &str| Reflect::get(&options, &name.into()).unwrap_or(JsValue::UNDEFINED);
        let progress = field("onProgress").dyn_into::<Function>().ok();
        let cap = field("maxBufferBytes").as_f64();
        let info = engine::load(&source, cap, |done, total| {
            if let Some(f) = &progress {
                let _ = f.call2(&JsValue::NULL, &done.into(), &total.into());
            }
        })
        .await
        .map_err(err)?;
        to_js(&serde_json::to_value(info).map_err(|e| err(e.to_string()))?)
    })
}

/// `chat(request, onChunk)`: resolves to the OpenAI chat completion; with `onChunk`, each
/// OpenAI chunk is passed to it first (the stream).
fn chat(request: JsValue, on_chunk: JsValue) -> Promise {
    future_to_promise(async move {
        let text = JSON::stringify(&request)
            .map_err(|_| err("the request is not JSON".into()))?
            .as_string()
            .unwrap_or_default();
        let call: engine::ChatCall = serde_json::from_str(&text)
            .map_err(|e| err(format!("clo.chat.completions.create: {e}")))?;
        let sink = on_chunk.dyn_into::<Function>().ok();
        let id = format!("chatcmpl-browser-{}", js_sys::Date::now() as u64);
        let model = engine::loaded().map(|l| l.name.clone()).unwrap_or_default();
        let chunk = |delta: serde_json::Value, reason: Option<&str>| {
            serde_json::json!({"id": id, "object": "chat.completion.chunk", "created": 0,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
        };
        let send = |value: serde_json::Value| {
            if let Some(f) = &sink
                && let Ok(v) = to_js(&value)
            {
                let _ = f.call1(&JsValue::NULL, &v);
            }
        };
        send(chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ));
        let answer = engine::chat(&call, |piece| {
            send(chunk(serde_json::json!({ "content": piece }), None))
        })
        .await
        .map_err(err)?;
        let reason = answer.stop.finish_reason();
        send(chunk(serde_json::json!({}), Some(reason)));
        let n = (answer.prompt_tokens, answer.ids.len());
        to_js(&serde_json::json!({
            "id": id, "object": "chat.completion", "created": 0, "model": answer.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": reason, "token_ids": answer.ids}],
            "usage": {"prompt_tokens": n.0, "completion_tokens": n.1, "total_tokens": n.0 + n.1},
        }))
    })
}

/// `train(options, onStep)`: fine-tunes the loaded model; each metrics line goes to `onStep`;
/// resolves to the last.
fn train(options: JsValue, on_step: JsValue) -> Promise {
    future_to_promise(async move {
        let text = JSON::stringify(&options)
            .map_err(|_| err("the options are not JSON".into()))?
            .as_string()
            .unwrap_or_default();
        let call: engine::TrainCall =
            serde_json::from_str(&text).map_err(|e| err(format!("clo.train: {e}")))?;
        let sink = on_step.dyn_into::<Function>().ok();
        let last = engine::train(&call, |line| {
            if let Some(f) = &sink
                && let Ok(v) = serde_json::to_value(line)
                && let Ok(v) = to_js(&v)
            {
                let _ = f.call1(&JsValue::NULL, &v);
            }
        })
        .await
        .map_err(err)?;
        to_js(&serde_json::to_value(last).map_err(|e| err(e.to_string()))?)
    })
}

/// Hands the engine's functions to `index.html`'s `window.clo`.
pub fn install() {
    let native = Object::new();
    let load = Closure::<dyn Fn(String, JsValue) -> Promise>::new(load);
    let chat = Closure::<dyn Fn(JsValue, JsValue) -> Promise>::new(chat);
    let _ = Reflect::set(&native, &"load".into(), load.as_ref());
    let _ = Reflect::set(&native, &"chat".into(), chat.as_ref());
    let train = Closure::<dyn Fn(JsValue, JsValue) -> Promise>::new(train);
    let _ = Reflect::set(&native, &"train".into(), train.as_ref());
    // The page lives as long as these functions.
    load.forget();
    chat.forget();
    train.forget();
    let window: JsValue = js_sys::global().into();
    if let Ok(ready) = Reflect::get(&window, &"__cloReady".into())
        && let Ok(ready) = ready.dyn_into::<Function>()
    {
        let _ = ready.call1(&JsValue::NULL, &native);
    }
}
