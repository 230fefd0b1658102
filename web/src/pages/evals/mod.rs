//! Evals: the tables of `clo eval report` over the work directory's evals, each with its chart,
//! drawn in the page from the report's typed numbers (`EvalReport::tables`).

mod report_table;

use leptos::prelude::*;

use crate::api;
use report_table::ReportTable;

#[component]
pub fn EvalsPage() -> impl IntoView {
    let report = LocalResource::new(api::eval_report);
    view! {
        <h1>"Evals"</h1>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            <ErrorBoundary fallback=|errors| view! {
                <p class="error" role="alert">
                    {move || errors.get().into_iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ")}
                </p>
            }>
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
                    .map_err(EvalsError)
                })}
            </ErrorBoundary>
        </Transition>
    }
}

/// A failed `GET /api/evals/report`, for the error boundary.
#[derive(Debug, Clone)]
struct EvalsError(String);

impl std::fmt::Display for EvalsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalsError {}
