//! The new-run form: model, dataset and every run setting, posted to `POST /api/runs`.

use std::collections::BTreeMap;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_navigate;

use crate::api;
use clo_core::api::{SettingForm, SettingInfo};

use crate::form::{config_from_form, default_values, fields};
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
    let schema = LocalResource::new(api::settings);
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
        if let Some(Ok(schema)) = schema.get() {
            values.set(default_values(&schema));
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
        let Some(Ok(schema)) = schema.get_untracked() else {
            error.set(Some("the run settings have not loaded yet".into()));
            return;
        };
        let config = match config_from_form(&values.get_untracked(), &schema) {
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

    let field_view = move |f: SettingInfo| {
        let key = f.key.clone();
        let current = {
            let key = key.clone();
            move || values.with(|v| v.get(&key).cloned().unwrap_or_default())
        };
        let set = {
            let key = key.clone();
            move |text: String| {
                values.update(|v| {
                    v.insert(key.clone(), text);
                })
            }
        };
        let choices = match f.kind.as_str() {
            "choice" => Some(f.choices.clone()),
            "bool" => Some(vec!["true".to_string(), "false".to_string()]),
            _ => None,
        };
        let input = match choices {
            Some(names) => {
                let options = names
                    .into_iter()
                    .map(|n| {
                        let current = current.clone();
                        let selected = {
                            let n = n.clone();
                            move || current() == n
                        };
                        view! { <option value=n.clone() prop:selected=selected>{n.clone()}</option> }
                    })
                    .collect_view();
                view! {
                    <select name=key.clone() on:change=move |ev| set(event_target_value(&ev))>
                        {options}
                    </select>
                }
                .into_any()
            }
            None => view! {
                <input
                    name=key.clone()
                    type="text"
                    inputmode=if matches!(f.kind.as_str(), "float" | "int" | "optional_int") {
                        "decimal"
                    } else {
                        "text"
                    }
                    prop:value=current
                    on:input=move |ev| set(event_target_value(&ev))
                />
            }
            .into_any(),
        };
        view! {
            <label class="field">
                <span class="label">{f.label.clone()}</span>
                {input}
                <small class="help">{f.help.clone()}</small>
            </label>
        }
    };
    let fields_in = move |place: SettingForm| {
        move || {
            schema
                .get()
                .and_then(Result::ok)
                .map(|s| fields(&s, place))
                .unwrap_or_default()
                .into_iter()
                .map(field_view)
                .collect_view()
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
                    {fields_in(SettingForm::Basic)}
                </div>
                <fieldset class="devices">
                    <legend>"Devices"</legend>
                    {move || match devices.get() {
                        Some(Ok(list)) => {
                            let default = list.default.clone();
                            // What each device is (`clo devices`), beside its spec.
                            let about = |spec: &str| {
                                list.details
                                    .iter()
                                    .find(|d| d.spec == spec)
                                    .map(|d| format!(" ({}, {})", d.name, d.kind))
                                    .unwrap_or_default()
                            };
                            let boxes = list
                                .available
                                .iter()
                                .cloned()
                                .map(|spec| {
                                    let about = about(&spec);
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
                                            <small class="about">{about}</small>
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
                        {fields_in(SettingForm::Advanced)}
                    </div>
                </details>
                {error_line(move || error.get())}
                <button type="submit" disabled=move || busy.get()>"Start run"</button>
            </form>
        </section>
    }
}
