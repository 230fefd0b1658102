//! A page of a dataset's quadruples, English beside target, each text with its language badge.

use leptos::prelude::*;

use super::PAGE;
use crate::pages::badge;
use crate::types::{DatasetPage, QuadView};

fn text_cell(
    prompt: String,
    response: String,
    detected: [Option<String>; 2],
    lang: String,
) -> impl IntoView {
    let [dx, dy] = detected;
    view! {
        <td>
            <div class="prompt">{badge(dx, Some(lang.clone()))}" "{prompt}</div>
            <div class="response">{badge(dy, Some(lang))}" "{response}</div>
        </td>
    }
}

#[component]
pub fn QuadTable(page: DatasetPage, offset: RwSignal<usize>) -> impl IntoView {
    let total = page.total;
    let start = page.offset;
    let end = start + page.records.len();
    let lang = page
        .records
        .first()
        .map(|r| r.lang.clone())
        .unwrap_or_default();
    let rows = page
        .records
        .into_iter()
        .map(|q: QuadView| {
            let [a, b, c, d] = q.detected.clone();
            view! {
                <tr>
                    <td class="num" title=q.id.clone()>{q.line}</td>
                    {text_cell(q.x_en, q.y_en, [a, b], "en".into())}
                    {text_cell(q.x_tgt, q.y_tgt, [c, d], q.lang)}
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="quads">
            <thead><tr><th>"#"</th><th>"English"</th><th>{format!("Target ({lang})")}</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <p class="pager">
            <button disabled={start == 0} on:click=move |_| offset.set(start.saturating_sub(PAGE))>"← Previous"</button>
            {format!(" records {}–{} of {total} ", start + 1, end)}
            <button disabled={end >= total} on:click=move |_| offset.set(end)>"Next →"</button>
        </p>
    }
}
