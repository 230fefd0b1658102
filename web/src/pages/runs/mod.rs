//! Runs: the list with status (here), the new-run form, a run's page (live charts over SSE,
//! cancel, resume), its metric charts and export.

mod export;
mod metric_chart;
mod new_run;
mod run_page;

pub(crate) use metric_chart::MetricChart;
pub use run_page::RunPage;

use std::time::Duration;

use leptos::prelude::*;
use leptos_router::components::A;

use super::{ApiFailure, failures, ticker};
use crate::api;
use crate::types::{RunInfo, RunState};
use new_run::NewRun;

pub(super) fn state_name(s: RunState) -> &'static str {
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
        api::runs()
    });
    view! {
        <h1>"Runs"</h1>
        <section>
            <Transition fallback=|| view! { <p>"Loading…"</p> }>
                <ErrorBoundary fallback=failures>
                    {move || Suspend::new(async move {
                        runs.await
                            .map(|list| {
                                if list.is_empty() {
                                    view! { <p class="empty">"No runs yet: start one below."</p> }
                                        .into_any()
                                } else {
                                    view! { <RunTable runs=list /> }.into_any()
                                }
                            })
                            .map_err(ApiFailure)
                    })}
                </ErrorBoundary>
            </Transition>
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
            let href = super::run_route(&r.name);
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
