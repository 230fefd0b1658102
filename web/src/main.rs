//! clo's web UI. The Leptos app (runs, data, playground, evals) is built here by Trunk from the
//! repository's `index.html`; until it lands, this binary only exists so the workspace layout is
//! in place.

fn main() {}
