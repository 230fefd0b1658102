//! Runs: the list with status, the new-run form, and a run's page (live charts over SSE,
//! cancel, checkpoints, export).

use std::collections::BTreeMap;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_chartistry::{
    AspectRatio, AxisMarker, Chart, Interpolation, IntoInner, Legend, Line, MarkerShape, Series,
    TickLabels, XGridLine, YGridLine,
};
use leptos_router::components::A;
use leptos_router::hooks::{use_navigate, use_params_map};
use send_wrapper::SendWrapper;
use serde_json::{Map, Value};

use super::{error_line, ticker};
use crate::api::{self, seg};
use crate::form::{FIELDS, Field, Kind, config_from_form, default_text};
use crate::series::{CHARTS, Chart as ChartSpec, SPARSE, parse_metric, present};
use crate::types::{
    CheckpointInfo, DatasetInfo, ExportRequest, ExportResponse, ModelInfo, RunInfo, RunRequest,
    RunState, StepMetrics,
};

fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Queued => "queued",
        RunState::Running => "running",
        RunState::Finished => "finished",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
        RunState::Interrupted => "interrupted",
    }
}

#[component]
pub fn RunsPage() -> impl IntoView {
    let tick = ticker(Duration::from_secs(2));
    let runs = LocalResource::new(move || {
        tick.get();
        api::get::<Vec<RunInfo>>("/api/runs")
    });
    view! {
        <h1>"Runs"</h1>
        <section>
            {move || match runs.get() {
                None => view! { <p>"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! { <p class="empty">"No runs yet: start one below."</p> }.into_any()
                }
                Some(Ok(list)) => view! { <RunTable runs=list /> }.into_any(),
            }}
        </section>
        <NewRun />
    }
}

#[component]
fn RunTable(runs: Vec<RunInfo>) -> impl IntoView {
    let rows = runs
        .into_iter()
        .map(|r| {
            let state = state_name(r.state);
            let href = format!("/runs/{}", seg(&r.name));
            let (row, label) = (r.name.clone(), r.name);
            view! {
                <tr data-run=row>
                    <td><A href=href>{label}</A></td>
                    <td><span class=format!("state {state}")>{state}</span></td>
                    <td>{r.method}</td>
                    <td>{r.model}</td>
                    <td>{r.dataset}</td>
                    <td class="num">{r.steps_done}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="runs">
            <thead>
                <tr>
                    <th>"Run"</th><th>"State"</th><th>"Method"</th><th>"Model"</th>
                    <th>"Dataset"</th><th>"Steps"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

/// A `<select>` of names; the current choice is `value`.
fn name_select(name: &'static str, names: Vec<String>, value: RwSignal<String>) -> impl IntoView {
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
fn NewRun() -> impl IntoView {
    let navigate = use_navigate();
    let models = LocalResource::new(|| api::get::<Vec<ModelInfo>>("/api/models"));
    let datasets = LocalResource::new(|| api::get::<Vec<DatasetInfo>>("/api/datasets"));
    let defaults = LocalResource::new(|| api::get::<Map<String, Value>>("/api/run-config"));
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
        };
        error.set(None);
        busy.set(true);
        let navigate = navigate.clone();
        spawn_local(async move {
            match api::post::<_, RunInfo>("/api/runs", &request).await {
                Ok(run) => navigate(&format!("/runs/{}", seg(&run.name)), Default::default()),
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
                <small class="help">{f.help}</small>
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

#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    let name = Memo::new(move |_| params.read().get("name").unwrap_or_default());
    let tick = ticker(Duration::from_secs(2));
    let info = LocalResource::new(move || {
        tick.get();
        let n = name.get();
        async move { api::get::<RunInfo>(&format!("/api/runs/{}", seg(&n))).await }
    });
    let points = RwSignal::new(Vec::<StepMetrics>::new());
    let stream_error = RwSignal::new(None::<String>);
    let streaming = RwSignal::new(false);

    // The metrics arrive as Server-Sent Events: every step so far, then each new one.
    // Bumped by Resume, so that the metrics stream starts over for the resumed run.
    let resumed = RwSignal::new(0u32);
    Effect::new(move |_| {
        let n = name.get();
        resumed.track();
        points.set(Vec::new());
        stream_error.set(None);
        let controller = web_sys::AbortController::new().ok();
        let signal = controller.as_ref().map(|c| c.signal());
        streaming.set(true);
        spawn_local(async move {
            let path = format!("/api/runs/{}/metrics", seg(&n));
            let result = api::stream::<()>(&path, None, signal.as_ref(), |ev| {
                match ev.event.as_str() {
                    "metric" => match parse_metric(&ev.data) {
                        Ok(m) => {
                            points.try_update(|p| p.push(m));
                        }
                        Err(e) => {
                            stream_error.try_set(Some(e));
                        }
                    },
                    "end" => return false,
                    _ => {}
                }
                true
            })
            .await;
            if let Err(e) = result
                && !signal.as_ref().is_some_and(|s| s.aborted())
            {
                stream_error.try_set(Some(e));
            }
            streaming.try_set(false);
        });
        let controller = SendWrapper::new(controller);
        on_cleanup(move || {
            if let Some(c) = controller.take() {
                c.abort();
            }
        });
    });

    let finished = Memo::new(move |_| {
        info.get()
            .and_then(Result::ok)
            .is_some_and(|r| r.state == RunState::Finished)
    });
    let action_error = RwSignal::new(None::<String>);
    let cancel = move |_| {
        let n = name.get_untracked();
        spawn_local(async move {
            let path = format!("/api/runs/{}/cancel", seg(&n));
            if let Err(e) = api::post::<_, RunInfo>(&path, &()).await {
                action_error.set(Some(e));
            }
        });
    };

    let resume = move |_| {
        let n = name.get_untracked();
        spawn_local(async move {
            let path = format!("/api/runs/{}/resume", seg(&n));
            match api::post::<_, RunInfo>(&path, &()).await {
                Ok(_) => resumed.update(|r| *r += 1),
                Err(e) => action_error.set(Some(e)),
            }
        });
    };

    view! {
        <h1>"Run " <code>{move || name.get()}</code></h1>
        {move || match info.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
            Some(Ok(run)) => {
                let state = state_name(run.state);
                let active = !run.state.is_done();
                view! {
                    <dl class="facts">
                        <dt>"State"</dt><dd><span class=format!("state {state}") data-testid="state">{state}</span></dd>
                        <dt>"Method"</dt><dd>{run.method.clone()}</dd>
                        <dt>"Model"</dt><dd>{run.model.clone()}</dd>
                        <dt>"Dataset"</dt><dd>{run.dataset.clone()}</dd>
                        <dt>"Steps done"</dt><dd>{run.steps_done}</dd>
                    </dl>
                    {run.error.clone().map(|e| view! { <p class="error">{e}</p> })}
                    {active.then(|| view! { <button class="danger" on:click=cancel>"Cancel run"</button> })}
                    {matches!(run.state, RunState::Interrupted | RunState::Cancelled | RunState::Failed)
                        .then(|| view! {
                            <button on:click=resume title="Continue from the newest checkpoint">"Resume"</button>
                        })}
                    {run.summary.clone().map(|s| view! {
                        <details><summary>"Summary"</summary>
                            <pre>{serde_json::to_string_pretty(&s).unwrap_or_default()}</pre>
                        </details>
                    })}
                }
                .into_any()
            }
        }}
        {error_line(move || action_error.get())}
        // Outside the polled block, so the export form keeps what is typed in it.
        <Show when=move || finished.get()>
            <Export name=name.get_untracked() />
        </Show>
        <p class="points">
            <span data-testid="points">{move || points.with(Vec::len)}</span>
            " steps received"
            {move || streaming.get().then_some(" (live)")}
        </p>
        {error_line(move || stream_error.get())}
        <div class="charts">
            {CHARTS.iter().map(|c| view! { <MetricChart spec=c points=points /> }).collect_view()}
        </div>
    }
}

/// One chart of the run page; lines the method lacks are left out, a chart without lines
/// is not drawn.
#[component]
fn MetricChart(spec: &'static ChartSpec, points: RwSignal<Vec<StepMetrics>>) -> impl IntoView {
    let names = Memo::new(move |_| {
        points.with(|p| present(spec, p).iter().map(|(n, _)| *n).collect::<Vec<_>>())
    });
    let data = Signal::derive(move || points.get());
    move || {
        let shown = names.get();
        if shown.is_empty() {
            return ().into_any();
        }
        let mut series = Series::new(|m: &StepMetrics| m.step as f64);
        for (label, get) in spec.lines.iter().filter(|(n, _)| shown.contains(n)) {
            let get = *get;
            let mut line = Line::new(move |m: &StepMetrics| get(m).unwrap_or(f64::NAN))
                .with_name(*label)
                .with_interpolation(Interpolation::Linear);
            if SPARSE.contains(label) {
                line = line.with_marker(MarkerShape::Circle);
            }
            series = series.line(line);
        }
        view! {
            <figure class="chart" data-chart=spec.id>
                <figcaption>{spec.title}</figcaption>
                <Chart
                    aspect_ratio=AspectRatio::from_outer_ratio(560.0, 260.0)
                    series=series
                    data=data
                    left=TickLabels::aligned_floats()
                    bottom=TickLabels::aligned_floats()
                    right=Legend::end()
                    inner=[
                        AxisMarker::left_edge().into_inner(),
                        AxisMarker::bottom_edge().into_inner(),
                        XGridLine::default().into_inner(),
                        YGridLine::default().into_inner(),
                    ]
                />
            </figure>
        }
        .into_any()
    }
}

/// Export a finished run's checkpoint as a Hugging Face model directory.
#[component]
fn Export(name: String) -> impl IntoView {
    let checkpoints = {
        let name = name.clone();
        LocalResource::new(move || {
            let path = format!("/api/runs/{}/checkpoints", seg(&name));
            async move { api::get::<Vec<CheckpointInfo>>(&path).await }
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
        let path = format!("/api/runs/{}/export", seg(&name));
        spawn_local(async move {
            result.set(Some(api::post::<_, ExportResponse>(&path, &request).await));
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
