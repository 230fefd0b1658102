//! A run's page: its state, live metric charts over SSE, cancel and resume, and export.

use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_params_map;
use send_wrapper::SendWrapper;

use super::export::Export;
use super::metric_chart::MetricChart;
use super::state_name;
use crate::api;
use crate::pages::{ApiFailure, error_line, failures, ticker};
use crate::series::{CHARTS, parse_metric};
use crate::types::{RunState, StepMetrics};

#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    let name = Memo::new(move |_| params.read().get("name").unwrap_or_default());
    let tick = ticker(Duration::from_secs(2));
    let info = LocalResource::new(move || {
        tick.get();
        let n = name.get();
        async move { api::run(&n).await }
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
            let result = api::run_metrics(&n, signal.as_ref(), |ev| {
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
            if let Err(e) = api::cancel_run(&n).await {
                action_error.set(Some(e));
            }
        });
    };

    let resume = move |_| {
        let n = name.get_untracked();
        spawn_local(async move {
            match api::resume_run(&n).await {
                Ok(_) => resumed.update(|r| *r += 1),
                Err(e) => action_error.set(Some(e)),
            }
        });
    };

    view! {
        <h1>"Run " <code>{move || name.get()}</code></h1>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            <ErrorBoundary fallback=failures>
                {move || Suspend::new(async move {
                    info.await.map_err(ApiFailure).map(|run| {
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

                    })
                })}
            </ErrorBoundary>
        </Transition>
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
