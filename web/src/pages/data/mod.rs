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

    view! {
        <h1>"Data"</h1>
        {move || match datasets.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
            Some(Ok(list)) if list.is_empty() => view! {
                <p class="empty">"No datasets: put quadruple JSONL files (from "<code>"clo prepare"</code>
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
