//! One chat pane of the playground: its model, its turns (streaming ones marked) and errors.

use leptos::prelude::*;

use super::Pane;
use crate::pages::{badge, error_line};

fn model_select(which: &'static str, pane: Pane, names: Vec<String>) -> impl IntoView {
    let options = names
        .into_iter()
        .map(|n| {
            let m = n.clone();
            view! { <option value=n.clone() prop:selected=move || pane.model.with(|v| *v == m)>{n.clone()}</option> }
        })
        .collect_view();
    view! {
        <select name=which on:change=move |ev| pane.model.set(event_target_value(&ev))>{options}</select>
    }
}

#[component]
pub fn ChatPane(which: &'static str, pane: Pane, names: Signal<Vec<String>>) -> impl IntoView {
    view! {
        <section class="pane" data-pane=which>
            <header>
                {move || model_select(which, pane, names.get())}
                <select
                    name=format!("engine-{which}")
                    title="Where the model runs: the server, or this browser's GPU (WebGPU)"
                    on:change=move |ev| pane.engine.set(event_target_value(&ev))
                >
                    <option value="server" prop:selected=move || pane.engine.with(|e| e == "server")>"server"</option>
                    <option value="browser" prop:selected=move || pane.engine.with(|e| e == "browser")>"this browser"</option>
                </select>
                <button class="link" on:click=move |_| pane.turns.set(Vec::new())>"Clear"</button>
            </header>
            <ol class="turns">
                {move || pane.turns.get().into_iter().map(|t| {
                    let class = format!("turn {}{}", t.role, if t.done { "" } else { " streaming" });
                    view! {
                        <li class=class data-pieces=t.pieces>
                            {t.lang.clone().map(|l| badge(l, None))}
                            <span class="text">{t.content.clone()}</span>
                        </li>
                    }
                }).collect_view()}
            </ol>
            {move || pane.status.get().map(|s| view! { <small class="engine-status">{s}</small> })}
            {error_line(move || pane.error.get())}
        </section>
    }
}
