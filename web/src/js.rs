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

/// A JavaScript value as `T` (through JSON); errors start with `what`.
fn from_js<T: serde::de::DeserializeOwned>(value: &JsValue, what: &str) -> Result<T, JsValue> {
    let text = JSON::stringify(value)
        .map_err(|_| err(format!("{what}: the argument is not JSON")))?
        .as_string()
        .unwrap_or_default();
    serde_json::from_str(&text).map_err(|e| err(format!("{what}: {e}")))
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

/// `loadFiles(files, options)`: a model directory the user picked on disk (`files`: the
/// `File`s of `<input type=file webkitdirectory>`, a `FileList` or an array).
fn load_files(files: JsValue, options: JsValue) -> Promise {
    future_to_promise(async move {
        let cap = Reflect::get(&options, &"maxBufferBytes".into())
            .ok()
            .and_then(|v| v.as_f64());
        let files: Vec<web_sys::File> = js_sys::Array::from(&files)
            .iter()
            .filter_map(|f| f.dyn_into().ok())
            .collect();
        let info = engine::load_files(&files, cap).await.map_err(err)?;
        to_js(&serde_json::to_value(info).map_err(|e| err(e.to_string()))?)
    })
}

/// `chat(request, onChunk)`: resolves to the OpenAI chat completion; with `onChunk`, each
/// OpenAI chunk is passed to it first (the stream).
fn chat(request: JsValue, on_chunk: JsValue) -> Promise {
    future_to_promise(async move {
        let call: engine::ChatCall = from_js(&request, "clo.chat.completions.create")?;
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
/// resolves to the last. `options.signal` (an `AbortSignal`) stops it after the step under way.
fn train(options: JsValue, on_step: JsValue) -> Promise {
    future_to_promise(async move {
        let signal = Reflect::get(&options, &"signal".into())
            .ok()
            .filter(|s| !s.is_undefined() && !s.is_null());
        let call: engine::TrainCall = from_js(&options, "clo.train")?;
        let sink = on_step.dyn_into::<Function>().ok();
        let aborted = || {
            signal.as_ref().is_some_and(|s| {
                Reflect::get(s, &"aborted".into())
                    .ok()
                    .and_then(|a| a.as_bool())
                    .unwrap_or(false)
            })
        };
        let last = engine::train(
            &call,
            |line| {
                if let Some(f) = &sink
                    && let Ok(v) = serde_json::to_value(line)
                    && let Ok(v) = to_js(&v)
                {
                    let _ = f.call1(&JsValue::NULL, &v);
                }
            },
            aborted,
        )
        .await
        .map_err(err)?;
        to_js(&serde_json::to_value(last).map_err(|e| err(e.to_string()))?)
    })
}

/// `exportAdapter()`: `{config, safetensors}`, the PEFT adapter of the model tuned with LoRA.
fn export_adapter() -> Promise {
    future_to_promise(async move {
        let (config, bytes) = engine::export_adapter().await.map_err(err)?;
        let out = Object::new();
        Reflect::set(&out, &"config".into(), &to_js(&config)?)?;
        Reflect::set(
            &out,
            &"safetensors".into(),
            &js_sys::Uint8Array::from(bytes.as_slice()),
        )?;
        Ok(out.into())
    })
}

/// `exportModel()`: `{files: {name: Uint8Array}}`, the loaded model (LoRA merged) as a
/// Hugging Face model directory.
fn export_model() -> Promise {
    future_to_promise(async move {
        let files = engine::export_model().await.map_err(err)?;
        let map = Object::new();
        for (name, bytes) in &files {
            Reflect::set(
                &map,
                &name.into(),
                &js_sys::Uint8Array::from(bytes.as_slice()),
            )?;
        }
        let out = Object::new();
        Reflect::set(&out, &"files".into(), &map)?;
        Ok(out.into())
    })
}

/// `score(records, options)`: `clo score`'s output lines (`{logp, n_tokens, token_logps}`) for
/// its input records (`{prompt, response}` or `{prompt_ids, response_ids}`);
/// `options.chat_template` puts text prompts in the chat template.
fn score(records: JsValue, options: JsValue) -> Promise {
    future_to_promise(async move {
        let records: Vec<clo_core::score::ScoreRecord> = from_js(
            &records,
            "clo.score (give an array of {prompt, response} or {prompt_ids, response_ids})",
        )?;
        let chat = Reflect::get(&options, &"chat_template".into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let scores = engine::score(&records, chat).await.map_err(err)?;
        to_js(&serde_json::to_value(scores).map_err(|e| err(e.to_string()))?)
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
    let load_files = Closure::<dyn Fn(JsValue, JsValue) -> Promise>::new(load_files);
    let _ = Reflect::set(&native, &"loadFiles".into(), load_files.as_ref());
    let export_adapter = Closure::<dyn Fn() -> Promise>::new(export_adapter);
    let _ = Reflect::set(&native, &"exportAdapter".into(), export_adapter.as_ref());
    let export_model = Closure::<dyn Fn() -> Promise>::new(export_model);
    let _ = Reflect::set(&native, &"exportModel".into(), export_model.as_ref());
    let score = Closure::<dyn Fn(JsValue, JsValue) -> Promise>::new(score);
    let _ = Reflect::set(&native, &"score".into(), score.as_ref());
    // The page lives as long as these functions.
    load.forget();
    chat.forget();
    train.forget();
    load_files.forget();
    export_adapter.forget();
    export_model.forget();
    score.forget();
    let window: JsValue = js_sys::global().into();
    if let Ok(ready) = Reflect::get(&window, &"__cloReady".into())
        && let Ok(ready) = ready.dyn_into::<Function>()
    {
        let _ = ready.call1(&JsValue::NULL, &native);
    }
}
