//! Evals: the tables of `clo eval report` over the work directory's evals, each with its chart,
//! drawn in the page from the report's typed numbers (`EvalReport::tables`).

mod report_table;

use leptos::prelude::*;

use super::{ApiFailure, failures};
use crate::api;
use report_table::ReportTable;

#[component]
pub fn EvalsPage() -> impl IntoView {
    let report = LocalResource::new(api::eval_report);
    view! {
        <h1>"Evals"</h1>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            <ErrorBoundary fallback=failures>
                {move || Suspend::new(async move {
                    report.await.map(|r| {
                        if r.tables.is_empty() {
                            view! {
                                <p class="empty">
                                    {r.message.unwrap_or_default()}
                                    ". Evaluate a run with "<code>"clo eval gen|mc|judge"</code>
                                    " and an output under WORKDIR/runs/RUN/ (or WORKDIR/evals/); its results show here."
                                </p>
                            }
                            .into_any()
                        } else {
                            let tables = r
                                .tables
                                .into_iter()
                                .map(|t| view! { <ReportTable table=t /> })
                                .collect_view();
                            view! { <article class="report">{tables}</article> }.into_any()
                        }
                    })
                    .map_err(ApiFailure)
                })}
            </ErrorBoundary>
        </Transition>
    }
}
