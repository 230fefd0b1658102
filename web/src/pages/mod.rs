//! The pages: runs (list, new-run form, run page), data, playground, training in the browser
//! and evals.

mod browser_train;
mod data;
mod evals;
mod playground;
pub(crate) mod runs;

pub use browser_train::BrowserTrainPage;
pub use data::DataPage;
pub use evals::EvalsPage;
pub use playground::PlaygroundPage;
pub use runs::{RunPage, RunsPage};

use std::time::Duration;

use leptos::prelude::*;

/// The UI's route of run `name` (`/runs/NAME`, percent-encoded).
pub fn run_route(name: &str) -> String {
    format!("/runs/{}", String::from(js_sys::encode_uri_component(name)))
}

/// A failed API call (the server's message), as the error an `ErrorBoundary` catches.
#[derive(Debug, Clone)]
pub struct ApiFailure(pub String);

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ApiFailure {}

/// What an `ErrorBoundary` shows: the messages of the failed calls.
pub fn failures(errors: ArcRwSignal<Errors>) -> impl IntoView {
    view! {
        <p class="error" role="alert">
            {move || errors.get().into_iter().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ")}
        </p>
    }
}

/// An error line (nothing when `None`).
pub fn error_line(error: impl Fn() -> Option<String> + Send + Sync + 'static) -> impl IntoView {
    move || {
        error().map(|e| {
            view! { <p class="error" role="alert">{e}</p> }
        })
    }
}

/// A counter that ticks every `every` while the page is shown: resources that read it reload.
pub fn ticker(every: Duration) -> RwSignal<u64> {
    let tick = RwSignal::new(0u64);
    if let Ok(handle) = set_interval_with_handle(move || tick.update(|t| *t += 1), every) {
        on_cleanup(move || handle.clear());
    }
    tick
}

/// A language badge: the detected code, coloured by whether it is the expected one.
pub fn badge(detected: Option<String>, expected: Option<String>) -> impl IntoView {
    let class = format!(
        "badge {}",
        crate::badge_class(detected.as_deref(), expected.as_deref())
    );
    let text = detected.unwrap_or_else(|| "?".into());
    view! { <span class=class title="detected language">{text}</span> }
}
