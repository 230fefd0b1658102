//! Train in browser: fine-tune a model on this browser's GPU (clo's engine on WebGPU,
//! [`crate::engine`]) with CLO, SFT or DPO, LoRA or attention-only; the reference pass, then live
//! charts of the same metrics as a run page, cancel; then chat with the tuned model in the
//! playground, or download it as a PEFT adapter or a merged model directory.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use send_wrapper::SendWrapper;
use wasm_bindgen::JsCast;

use crate::api;
use crate::engine;
use crate::pages::error_line;
use crate::pages::runs::MetricChart;
use crate::series::CHARTS;
use crate::types::StepMetrics;

/// The files the user picked with an `<input type=file>` (`name`: the input's name attribute).
pub(crate) fn picked_files(name: &str) -> Vec<web_sys::File> {
    let Some(input) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| {
            d.query_selector(&format!("input[name={name}]"))
                .ok()
                .flatten()
        })
        .and_then(|e| e.dyn_into::<web_sys::HtmlInputElement>().ok())
    else {
        return Vec::new();
    };
    let Some(list) = input.files() else {
        return Vec::new();
    };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// An object URL of `bytes` (the `href` of a download link).
fn download_link(bytes: &[u8], kind: &str) -> Option<String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(kind);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options).ok()?;
    web_sys::Url::create_object_url_with_blob(&blob).ok()
}

/// Files ready to download: (file name, object URL, size).
type Downloads = Vec<(String, String, usize)>;

fn links_of(files: BTreeMap<String, Vec<u8>>) -> Downloads {
    files
        .into_iter()
        .filter_map(|(name, bytes)| {
            let kind = if name.ends_with(".json") {
                "application/json"
            } else {
                "application/octet-stream"
            };
            download_link(&bytes, kind).map(|url| (name, url, bytes.len()))
        })
        .collect()
}

#[component]
pub fn BrowserTrainPage() -> impl IntoView {
    let models = LocalResource::new(api::models);
    let datasets = LocalResource::new(api::datasets);
    let model = RwSignal::new(String::new());
    let dataset = RwSignal::new(String::new());
    let method = RwSignal::new("clo".to_string());
    let trainable = RwSignal::new("lora".to_string());
    let steps = RwSignal::new("20".to_string());
    let lr = RwSignal::new("0.001".to_string());
    let batch_size = RwSignal::new("2".to_string());
    let status = RwSignal::new(None::<String>);
    let progress = RwSignal::new(None::<(f64, f64)>);
    let error = RwSignal::new(None::<String>);
    let loaded = RwSignal::new(engine::loaded().map(|l| l.name.clone()));
    let points = RwSignal::new(Vec::<StepMetrics>::new());
    let training = RwSignal::new(false);
    let done = RwSignal::new(None::<String>);
    let downloads = RwSignal::new(Downloads::new());
    let cancel = SendWrapper::new(Rc::new(Cell::new(false)));
    // A folder picker (`webkitdirectory`, which every engine with WebGPU supports).
    let folder_input = NodeRef::<leptos::html::Input>::new();
    Effect::new(move |_| {
        if let Some(input) = folder_input.get() {
            let _ = input.set_attribute("webkitdirectory", "");
        }
    });

    // The first model and dataset of the server (the toy ones when it serves them).
    Effect::new(move |_| {
        if let Some(Ok(list)) = models.get()
            && model.get_untracked().is_empty()
            && let Some(first) = list.iter().find(|m| m.name == "toy").or(list.first())
        {
            model.set(first.name.clone());
        }
        if let Some(Ok(list)) = datasets.get()
            && dataset.get_untracked().is_empty()
            && let Some(first) = list.iter().find(|d| d.name == "toy").or(list.first())
        {
            dataset.set(first.name.clone());
        }
    });

    let on_loaded = move |result: Result<engine::LoadInfo, String>| match result {
        Ok(info) => {
            status.set(Some(format!(
                "{} on WebGPU: {:.2}M parameters, vocabulary {}",
                info.name,
                info.parameters as f64 / 1e6,
                info.vocab_size
            )));
            loaded.set(Some(info.name));
            progress.set(None);
        }
        Err(e) => {
            status.set(None);
            progress.set(None);
            error.set(Some(format!(
                "{e} (the server engine still trains: New run on the Runs page)"
            )));
        }
    };
    let load_named = move |_| {
        let name = model.get_untracked();
        error.set(None);
        status.set(Some(format!("loading {name} into this browser…")));
        spawn_local(async move {
            let result = engine::load(&name, None, |d, t| {
                progress.try_set(Some((d, t)));
            })
            .await;
            on_loaded(result);
        });
    };
    let load_folder = move |_| {
        let files = picked_files("folder");
        error.set(None);
        spawn_local(async move {
            on_loaded(engine::load_files(&files, None).await);
        });
    };

    let stop = cancel.clone();
    let start = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        error.set(None);
        done.set(None);
        downloads.set(Vec::new());
        let parse = |what: &str, v: &str| -> Result<f64, String> {
            v.trim()
                .parse::<f64>()
                .map_err(|_| format!("{what}: give a number"))
        };
        let settings = (|| -> Result<engine::TrainCall, String> {
            let steps = parse("Steps", &steps.get_untracked())? as usize;
            let batch = parse("Batch size", &batch_size.get_untracked())? as usize;
            Ok(engine::TrainCall {
                data: serde_json::Value::Null,
                method: Some(method.get_untracked()),
                trainable: Some(trainable.get_untracked()),
                steps: Some(steps),
                lr: Some(parse("Learning rate", &lr.get_untracked())?),
                batch_size: Some(batch),
                beta: None,
                lambda: None,
                lora_rank: None,
                val_fraction: Some(0.0),
                seed: None,
                max_len: None,
            })
        })();
        let mut call = match settings {
            Ok(c) => c,
            Err(e) => {
                error.set(Some(e));
                return;
            }
        };
        let file = picked_files("data-file").into_iter().next();
        let chosen = dataset.get_untracked();
        let flag = (*stop).clone();
        flag.set(false);
        points.set(Vec::new());
        training.set(true);
        status.set(Some(
            "reading the data and computing the reference log-probs…".into(),
        ));
        spawn_local(async move {
            let result = async {
                call.data = match &file {
                    Some(f) => {
                        let text = String::from_utf8(engine::file_bytes(f).await?)
                            .map_err(|_| format!("{} is not UTF-8 text", f.name()))?;
                        let quads = clo_core::train::data::quadruples_from_text(
                            std::path::Path::new(&f.name()),
                            &text,
                        )
                        .map_err(|e| e.to_string())?;
                        serde_json::to_value(quads).map_err(|e| e.to_string())?
                    }
                    None if chosen.is_empty() => {
                        return Err("pick a dataset of the server or a quadruple JSONL file".into());
                    }
                    None => serde_json::Value::String(format!("/api/datasets/{chosen}/file")),
                };
                engine::train(
                    &call,
                    |line| {
                        points.try_update(|p| p.push(line.clone()));
                        status.try_set(Some(format!(
                            "step {}: loss {:.4}, {:.0} tokens/s",
                            line.step, line.loss, line.tokens_per_s
                        )));
                    },
                    || flag.get(),
                )
                .await
            }
            .await;
            training.try_set(false);
            match result {
                Ok(last) => {
                    let name = engine::loaded().map(|l| l.name.clone()).unwrap_or_default();
                    let how = if flag.get() {
                        "cancelled after"
                    } else {
                        "finished:"
                    };
                    done.try_set(Some(format!(
                        "{how} {} steps, loss {:.4}; this browser now holds {name}",
                        last.step + 1,
                        last.loss
                    )));
                    loaded.try_set(Some(name));
                }
                Err(e) => {
                    error.try_set(Some(e));
                }
            }
        });
    };
    let cancel_click = move |_| cancel.set(true);

    let prepare = move |adapter: bool| {
        error.set(None);
        status.set(Some("reading the weights back from the GPU…".into()));
        spawn_local(async move {
            let files = if adapter {
                engine::export_adapter().await.map(|(config, bytes)| {
                    BTreeMap::from([
                        (
                            "adapter_config.json".to_string(),
                            serde_json::to_vec_pretty(&config).unwrap_or_default(),
                        ),
                        ("adapter_model.safetensors".to_string(), bytes),
                    ])
                })
            } else {
                engine::export_model().await
            };
            match files {
                Ok(files) => {
                    downloads.try_set(links_of(files));
                    status.try_set(Some(
                        "ready: save each file into one folder (native clo reads it)".into(),
                    ));
                }
                Err(e) => {
                    error.try_set(Some(e));
                }
            }
        });
    };

    let model_names = move || {
        models
            .get()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .map(|m| view! { <option value=m.name.clone()>{m.name.clone()}</option> })
            .collect_view()
    };
    let dataset_options = move || {
        datasets
            .get()
            .and_then(Result::ok)
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                let n = d.name.clone();
                view! {
                    <option value=d.name.clone() prop:selected=move || dataset.with(|v| *v == n)>
                        {format!("{} ({} quadruples)", d.name, d.records)}
                    </option>
                }
            })
            .collect_view()
    };
    let choice = |name: &'static str, value: RwSignal<String>, options: &'static [&'static str]| {
        view! {
            <select name=name on:change=move |ev| value.set(event_target_value(&ev))>
                {options.iter().map(|o| view! {
                    <option value=*o prop:selected=move || value.with(|v| v == o)>{*o}</option>
                }).collect_view()}
            </select>
        }
    };

    view! {
        <h1>"Train in browser"</h1>
        <p class="hint">
            "Fine-tunes on this browser's GPU through WebGPU: nothing trains on the server. "
            "One model at a time; small models (the toy model, up to a few hundred million parameters)."
        </p>
        <section class="browser-model">
            <h2>"1. Model"</h2>
            <label>"Model of the server or URL of a model directory "
                <input name="model" list="browser-models" bind:value=model />
            </label>
            <datalist id="browser-models">{model_names}</datalist>
            <button name="load" on:click=load_named>"Load"</button>
            <label>" or a folder on this computer "
                <input type="file" name="folder" node_ref=folder_input on:change=load_folder />
            </label>
            {move || progress.get().map(|(d, t)| view! {
                <progress max=t value=d></progress>
                <span>{format!(" {:.1} / {:.1} MB", d / 1e6, t / 1e6)}</span>
            })}
            <p class="engine-status">{move || status.get()}</p>
            <p>"In this browser: " <code data-testid="loaded">{move || loaded.get().unwrap_or_else(|| "nothing yet".into())}</code></p>
        </section>
        <form class="browser-train" on:submit=start>
            <h2>"2. Fine-tune"</h2>
            <label>"Dataset of the server "
                <select name="dataset" on:change=move |ev| dataset.set(event_target_value(&ev))>{dataset_options}</select>
            </label>
            <label>" or a quadruple JSONL file " <input type="file" name="data-file" accept=".jsonl,.json,application/jsonl" /></label>
            <label>"Method " {choice("method", method, &["clo", "sft", "dpo"])}</label>
            <label>"Trainable " {choice("trainable", trainable, &["lora", "attention"])}</label>
            <label>"Steps " <input name="steps" size="5" bind:value=steps /></label>
            <label>"Learning rate " <input name="lr" size="8" bind:value=lr /></label>
            <label>"Batch size " <input name="batch_size" size="4" bind:value=batch_size /></label>
            <button type="submit" disabled=move || training.get() || loaded.get().is_none()>"Start"</button>
            <button type="button" class="danger" name="cancel" disabled=move || !training.get() on:click=cancel_click>"Cancel"</button>
        </form>
        {error_line(move || error.get())}
        <p class="points">
            <span data-testid="points">{move || points.with(Vec::len)}</span>
            " steps"
            {move || training.get().then_some(" (training)")}
        </p>
        {move || done.get().map(|d| view! {
            <section class="browser-done">
                <p data-testid="done">{d}</p>
                <p><A href="/playground">"Chat with it in the playground"</A>" (this browser engine)"</p>
                <button name="download-adapter" on:click=move |_| prepare(true)>"PEFT adapter (LoRA)"</button>
                <button name="download-model" on:click=move |_| prepare(false)>"Merged model"</button>
            </section>
        })}
        <ul class="downloads">
            {move || downloads.get().into_iter().map(|(name, url, size)| view! {
                <li><a href=url download=name.clone()>{name.clone()}</a>{format!(" ({size} bytes)")}</li>
            }).collect_view()}
        </ul>
        <div class="charts">
            {CHARTS.iter().map(|c| view! { <MetricChart spec=c points=points /> }).collect_view()}
        </div>
    }
}
