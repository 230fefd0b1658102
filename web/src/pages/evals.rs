//! Evals: the tables and charts of `clo eval report` over the work directory's evals.

use leptos::prelude::*;
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

use crate::api;
use crate::types::EvalReport;

/// `report.md` as HTML, with the charts it links (SVG files of the report) drawn in place.
fn report_html(report: &EvalReport) -> String {
    let Some(md) = report.files.get("report.md") else {
        return String::new();
    };
    let mut events = Vec::new();
    let mut skipping = false;
    for event in Parser::new_ext(md, Options::ENABLE_TABLES) {
        match &event {
            Event::Start(Tag::Image { dest_url, .. }) => {
                if let Some(svg) = report.files.get(dest_url.as_ref()) {
                    events.push(Event::Html(svg.clone().into()));
                    skipping = true;
                    continue;
                }
            }
            Event::End(TagEnd::Image) if skipping => {
                skipping = false;
                continue;
            }
            _ if skipping => continue,
            _ => {}
        }
        events.push(event);
    }
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events.into_iter());
    html
}

#[component]
pub fn EvalsPage() -> impl IntoView {
    let report = LocalResource::new(api::eval_report);
    view! {
        <h1>"Evals"</h1>
        {move || match report.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => view! { <p class="error">{e}</p> }.into_any(),
            Some(Ok(r)) if r.files.is_empty() => view! {
                <p class="empty">
                    {r.message.unwrap_or_default()}
                    ". Evaluate a run with "<code>"clo eval gen|mc|judge"</code>
                    " and an output under WORKDIR/runs/RUN/ (or WORKDIR/evals/); its results show here."
                </p>
            }.into_any(),
            Some(Ok(r)) => view! { <article class="report" inner_html=report_html(&r)></article> }.into_any(),
        }}
    }
}
