//! The new-run form: model, dataset and every run setting, posted to `POST /api/runs`.

use std::collections::BTreeMap;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_navigate;

use crate::api;
use crate::form::{FIELDS, Field, Kind, config_from_form, default_text};
use crate::pages::error_line;
use crate::types::RunRequest;

/// A `<select>` of names; the current choice is `value`.
pub(super) fn name_select(
    name: &'static str,
    names: Vec<String>,
    value: RwSignal<String>,
) -> impl IntoView {
    let options = names
        .into_iter()
        .map(|n| {
            let selected = {
                let n = n.clone();
                move || value.with(|v| *v == n)
            };
            view! { <option value=n.clone() prop:selected=selected>{n.clone()}</option> }
        })
        .collect_view();
    view! {
        <select name=name on:change=move |ev| value.set(event_target_value(&ev))>{options}</select>
    }
}

#[component]
pub fn NewRun() -> impl IntoView {
    let navigate = use_navigate();
    let models = LocalResource::new(api::models);
    let datasets = LocalResource::new(api::datasets);
    let defaults = LocalResource::new(api::run_defaults);
    let devices = LocalResource::new(api::devices);
    // Devices ticked for data parallelism (none: the server's device).
    let chosen = RwSignal::new(Vec::<String>::new());
    let model = RwSignal::new(String::new());
    let dataset = RwSignal::new(String::new());
    let name = RwSignal::new(String::new());
    let values = RwSignal::new(BTreeMap::<String, String>::new());
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);

    // The form starts from the server's defaults and the first model and dataset.
    Effect::new(move |_| {
        if let Some(Ok(d)) = defaults.get() {
            values.set(
                FIELDS
                    .iter()
                    .map(|f| (f.key.to_string(), default_text(&d, f.key)))
                    .collect(),
            );
        }
    });
    Effect::new(move |_| {
        if let Some(Ok(list)) = models.get()
            && model.get_untracked().is_empty()
            && let Some(first) = list.iter().find(|m| m.source == "dir")
        {
            model.set(first.name.clone());
        }
    });
    Effect::new(move |_| {
        if let Some(Ok(list)) = datasets.get()
            && dataset.get_untracked().is_empty()
            && let Some(first) = list.first()
        {
            dataset.set(first.name.clone());
        }
    });

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(Ok(d)) = defaults.get_untracked() else {
            error.set(Some("the run defaults have not loaded yet".into()));
            return;
        };
        let config = match config_from_form(&values.get_untracked(), &d) {
            Ok(c) => c,
            Err(e) => {
                error.set(Some(e));
                return;
            }
        };
        let request = RunRequest {
            name: Some(name.get_untracked().trim().to_string()).filter(|n| !n.is_empty()),
            model: model.get_untracked(),
            dataset: dataset.get_untracked(),
            config,
            devices: Some(chosen.get_untracked().join(",")).filter(|d| !d.is_empty()),
        };
        error.set(None);
        busy.set(true);
        let navigate = navigate.clone();
        spawn_local(async move {
            match api::create_run(&request).await {
                Ok(run) => navigate(&crate::pages::run_route(&run.name), Default::default()),
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };

    let field_view = move |f: &'static Field| {
        let key = f.key;
        let current = move || values.with(|v| v.get(key).cloned().unwrap_or_default());
        let input = match f.kind {
            Kind::Choice(names) => {
                let options = names
                    .iter()
                    .map(|n| {
                        view! {
                            <option value=*n prop:selected=move || current() == *n>{*n}</option>
                        }
                    })
                    .collect_view();
                view! {
                    <select
                        name=key
                        on:change=move |ev| values.update(|v| {
                            v.insert(key.to_string(), event_target_value(&ev));
                        })
                    >
                        {options}
                    </select>
                }
                .into_any()
            }
            _ => view! {
                <input
                    name=key
                    type="text"
                    inputmode="decimal"
                    prop:value=current
                    on:input=move |ev| values.update(|v| {
                        v.insert(key.to_string(), event_target_value(&ev));
                    })
                />
            }
            .into_any(),
        };
        view! {
            <label class="field">
                <span class="label">{f.label}</span>
                {input}
                <small class="help">{f.help()}</small>
            </label>
        }
    };

    view! {
        <section class="new-run">
            <h2>"New run"</h2>
            <form on:submit=submit>
                <div class="grid">
                    <label class="field">
                        <span class="label">"Model"</span>
                        {move || {
                            let names = models
                                .get()
                                .and_then(Result::ok)
                                .unwrap_or_default()
                                .into_iter()
                                .map(|m| m.name)
                                .collect();
                            name_select("model", names, model)
                        }}
                        <small class="help">
                            "A Hugging Face model directory (--model, WORKDIR/models/) or a finished run (run:NAME)."
                        </small>
                    </label>
                    <label class="field">
                        <span class="label">"Dataset"</span>
                        {move || {
                            let names = datasets
                                .get()
                                .and_then(Result::ok)
                                .unwrap_or_default()
                                .into_iter()
                                .map(|d| d.name)
                                .collect();
                            name_select("dataset", names, dataset)
                        }}
                        <small class="help">"Quadruples in WORKDIR/datasets/ (clo prepare)."</small>
                    </label>
                    <label class="field">
                        <span class="label">"Run name"</span>
                        <input name="name" type="text" placeholder="made up when empty" bind:value=name />
                        <small class="help">"Letters, digits, '-', '_' and '.'."</small>
                    </label>
                    {FIELDS.iter().filter(|f| !f.advanced).map(field_view).collect_view()}
                </div>
                <fieldset class="devices">
                    <legend>"Devices"</legend>
                    {move || match devices.get() {
                        Some(Ok(list)) => {
                            let default = list.default.clone();
                            let boxes = list
                                .available
                                .into_iter()
                                .map(|spec| {
                                    let value = spec.clone();
                                    let checked = {
                                        let spec = spec.clone();
                                        move || chosen.with(|c| c.contains(&spec))
                                    };
                                    view! {
                                        <label class="device">
                                            <input
                                                type="checkbox"
                                                name="devices"
                                                value=value.clone()
                                                prop:checked=checked
                                                on:change=move |ev| {
                                                    let on = event_target_checked(&ev);
                                                    let v = value.clone();
                                                    chosen.update(|c| {
                                                        c.retain(|x| *x != v);
                                                        if on {
                                                            c.push(v);
                                                        }
                                                    });
                                                }
                                            />
                                            {spec}
                                        </label>
                                    }
                                })
                                .collect_view();
                            view! {
                                {boxes}
                                <small class="help">
                                    {format!(
                                        "None ticked: the server's device ({default}). Several: one model replica per device, each batch split across them by whole quadruples (clo train --devices)."
                                    )}
                                </small>
                            }
                            .into_any()
                        }
                        Some(Err(e)) => view! { <small class="help">{e}</small> }.into_any(),
                        None => view! { <small class="help">"…"</small> }.into_any(),
                    }}
                </fieldset>
                <details>
                    <summary>"More settings"</summary>
                    <div class="grid">
                        {FIELDS.iter().filter(|f| f.advanced).map(field_view).collect_view()}
                    </div>
                </details>
                {error_line(move || error.get())}
                <button type="submit" disabled=move || busy.get()>"Start run"</button>
            </form>
        </section>
    }
}
