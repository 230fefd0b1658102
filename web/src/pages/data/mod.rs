//! Data: a dataset's quadruples side by side (English | target), each text with the language
//! it was identified as, and the summary `clo prepare` wrote.

mod quad_table;

use leptos::prelude::*;

use super::{ApiFailure, failures};
use crate::api;

const PAGE: usize = 20;
use quad_table::QuadTable;

#[component]
pub fn DataPage() -> impl IntoView {
    let datasets = LocalResource::new(api::datasets);
    let chosen = RwSignal::new(String::new());
    let offset = RwSignal::new(0usize);
    Effect::new(move |_| {
        if let Some(Ok(list)) = datasets.get()
            && chosen.get_untracked().is_empty()
            && let Some(first) = list.first()
        {
            chosen.set(first.name.clone());
        }
    });
    let page = LocalResource::new(move || {
        let (name, offset) = (chosen.get(), offset.get());
        async move {
            if name.is_empty() {
                return Ok(None);
            }
            api::dataset_page(&name, offset, PAGE).await.map(Some)
        }
    });
    let info = move || {
        datasets.get().and_then(Result::ok).and_then(|list| {
            let name = chosen.get();
            list.into_iter().find(|d| d.name == name)
        })
    };

    // Upload: a quadruple JSONL file from this computer, named after it unless a name is given.
    let upload_name = RwSignal::new(String::new());
    let replace = RwSignal::new(false);
    let upload_error = RwSignal::new(None::<String>);
    let uploaded = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let upload = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        upload_error.set(None);
        uploaded.set(None);
        let Some(file) = super::browser_train::picked_files("upload_file")
            .into_iter()
            .next()
        else {
            upload_error.set(Some("choose a .jsonl file of quadruples first".into()));
            return;
        };
        let typed = upload_name.get_untracked().trim().to_string();
        let name = if typed.is_empty() {
            let f = file.name();
            f.strip_suffix(".jsonl")
                .or_else(|| f.strip_suffix(".json"))
                .unwrap_or(&f)
                .to_string()
        } else {
            typed
        };
        let replace = replace.get_untracked();
        busy.set(true);
        leptos::task::spawn_local(async move {
            let result = match crate::engine::file_bytes(&file).await {
                Ok(bytes) => api::upload_dataset(&name, &bytes, replace).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(info) => {
                    uploaded.set(Some(format!(
                        "{} uploaded: {} records",
                        info.name, info.records
                    )));
                    offset.set(0);
                    chosen.set(info.name);
                    datasets.refetch();
                }
                Err(e) => upload_error.set(Some(e)),
            }
            busy.set(false);
        });
    };

    view! {
        <h1>"Data"</h1>
        <form class="upload" on:submit=upload>
            <label>"Upload quadruples "
                <input type="file" name="upload_file" accept=".jsonl,.json,application/x-ndjson" />
            </label>
            <input type="text" name="upload_name" placeholder="name (the file's when empty)" bind:value=upload_name />
            <label><input type="checkbox" name="upload_replace" bind:checked=replace />" replace a dataset of that name"</label>
            <button type="submit" disabled=move || busy.get()>"Upload"</button>
            {move || uploaded.get().map(|m| view! { <p class="ok">{m}</p> })}
            {super::error_line(move || upload_error.get())}
        </form>
        {move || match datasets.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
            Some(Ok(list)) if list.is_empty() => view! {
                <p class="empty">"No datasets: upload a quadruple JSONL file above, put files (from "<code>"clo prepare"</code>
                ") in WORKDIR/datasets/, or start "<code>"clo serve --toy"</code>"."</p>
            }.into_any(),
            Some(Ok(list)) => {
                let options = list.into_iter().map(|d| {
                    let n = d.name.clone();
                    let selected = move || chosen.with(|c| *c == n);
                    view! { <option value=d.name.clone() prop:selected=selected>{format!("{} ({} records)", d.name, d.records)}</option> }
                }).collect_view();
                view! {
                    <label>"Dataset "
                        <select name="dataset" on:change=move |ev| { offset.set(0); chosen.set(event_target_value(&ev)); }>
                            {options}
                        </select>
                    </label>
                }.into_any()
            }
        }}
        {move || info().and_then(|d| d.summary).map(|s| view! {
            <details class="summary" open>
                <summary>"Prepare summary"</summary>
                <dl class="facts">
                    {s.as_object().cloned().unwrap_or_default().into_iter().map(|(k, v)| view! {
                        <dt>{k}</dt>
                        <dd>{match v { serde_json::Value::String(s) => s, v => v.to_string() }}</dd>
                    }).collect_view()}
                </dl>
            </details>
        })}
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            <ErrorBoundary fallback=failures>
                {move || Suspend::new(async move {
                    page.await
                        .map(|p| p.map(|p| view! { <QuadTable page=p offset=offset /> }))
                        .map_err(ApiFailure)
                })}
            </ErrorBoundary>
        </Transition>
    }
}
