//! The app shell: navigation, the API token field, and the pages' routes.

use leptos::prelude::*;
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::path;

use crate::api;
use crate::pages::{BrowserTrainPage, DataPage, EvalsPage, PlaygroundPage, RunPage, RunsPage};

#[component]
pub fn App() -> impl IntoView {
    let token = RwSignal::new(api::token().unwrap_or_default());
    view! {
        <Router>
            <header>
                <span class="brand">"clo"</span>
                <nav>
                    <A href="/">"Runs"</A>
                    <A href="/data">"Data"</A>
                    <A href="/playground">"Playground"</A>
                    <A href="/train-in-browser">"Train in browser"</A>
                    <A href="/evals">"Evals"</A>
                </nav>
                <form class="token" on:submit=|ev| ev.prevent_default()>
                <label title="The --token of clo serve, when it was started with one">
                    "API token "
                    <input
                        type="password"
                        placeholder="only with --token"
                        prop:value=move || token.get()
                        on:change=move |ev| {
                            let t = event_target_value(&ev);
                            api::set_token(&t);
                            token.set(t);
                        }
                    />
                </label>
                </form>
            </header>
            <main>
                <Routes fallback=|| view! { <p class="error">"No such page."</p> }>
                    <Route path=path!("/") view=RunsPage />
                    <Route path=path!("/runs/:name") view=RunPage />
                    <Route path=path!("/data") view=DataPage />
                    <Route path=path!("/playground") view=PlaygroundPage />
                    <Route path=path!("/train-in-browser") view=BrowserTrainPage />
                    <Route path=path!("/evals") view=EvalsPage />
                </Routes>
            </main>
        </Router>
    }
}

pub fn main() {
    console_error_panic_hook::set_once();
    crate::js::install();
    leptos::mount::mount_to_body(App);
}
