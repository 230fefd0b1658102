//! Export of a finished run's checkpoint as a model directory.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;

use super::new_run::name_select;
use crate::api;
use crate::types::{ExportRequest, ExportResponse};

/// Export a finished run's checkpoint as a Hugging Face model directory.
#[component]
pub fn Export(name: String) -> impl IntoView {
    let checkpoints = {
        let name = name.clone();
        LocalResource::new(move || {
            let name = name.clone();
            async move { api::checkpoints(&name).await }
        })
    };
    let from = RwSignal::new("best".to_string());
    let model_name = RwSignal::new(format!("{name}-export"));
    let result = RwSignal::new(None::<Result<ExportResponse, String>>);
    let export = move |_| {
        let request = ExportRequest {
            from: Some(from.get_untracked()),
            model_name: Some(model_name.get_untracked()).filter(|n| !n.trim().is_empty()),
        };
        let name = name.clone();
        spawn_local(async move {
            result.set(Some(api::export(&name, &request).await));
        });
    };
    view! {
        <section class="export">
            <h2>"Export"</h2>
            <label>
                "From "
                {move || {
                    let mut names = vec!["best".to_string(), "last".to_string()];
                    names.extend(
                        checkpoints.get().and_then(Result::ok).unwrap_or_default()
                            .into_iter().map(|c| c.name).filter(|n| n != "best"),
                    );
                    name_select("from", names, from)
                }}
            </label>
            <label>" as model " <input name="model_name" type="text" bind:value=model_name /></label>
            <button on:click=export>"Export"</button>
            {move || result.get().map(|r| match r {
                Ok(e) => view! {
                    <p class="ok">"Exported " {e.from} " as model " <code>{e.model}</code>
                    ": try it in the " <A href="/playground">"playground"</A> "."</p>
                }.into_any(),
                Err(e) => view! { <p class="error">{e}</p> }.into_any(),
            })}
        </section>
    }
}
