//! clo's web UI: a Leptos app, client-side rendered and built by Trunk from the repository's
//! `index.html`, served by `clo serve`.
//!
//! The request and response types are the server's own ([`types`] is `clo_core::api`: the
//! web crate depends on clo-core, built for wasm32 with its `wasm` feature), so the two cannot
//! drift apart. The logic
//! the pages rest on (Server-Sent Events, the run form, chart series, language badges) builds
//! natively and is unit-tested with `cargo test`; the pages themselves build for wasm32 only.

pub use clo_core::api as types;

pub mod form;
pub mod series;
pub mod sse;

#[cfg(target_arch = "wasm32")]
pub mod api;
#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
pub mod engine;
#[cfg(target_arch = "wasm32")]
pub mod js;
#[cfg(target_arch = "wasm32")]
mod pages;

#[cfg(target_arch = "wasm32")]
unsafe extern "C" {
    /// The static constructors wasm-ld collects (Burn's wgpu backend registers its kernels in
    /// some, through `inventory`).
    fn __wasm_call_ctors();
}

/// The browser entry point: Trunk builds this library for wasm32 from the repository's
/// `index.html`, and the page runs this once the module is instantiated.
///
/// It runs the static constructors itself, once. When a module never calls
/// `__wasm_call_ctors`, wasm-ld wraps *every* export in a call to it (a "command" module), and
/// each call from JavaScript then re-registered every kernel: the page stalled for seconds on
/// each event (`inventory`'s documentation gives this remedy).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    // SAFETY: called once, first, before any code that reads what the constructors register.
    unsafe { __wasm_call_ctors() };
    app::main();
}

/// How a detected language compares with the one a text should be in: `ok` (the same), `off`
/// (another one) or `unknown` (undetermined); the CSS class of the badge.
pub fn badge_class(detected: Option<&str>, expected: Option<&str>) -> &'static str {
    match (detected, expected) {
        (None, _) => "unknown",
        (Some(_), None) => "ok",
        (Some(d), Some(e)) if d == e => "ok",
        _ => "off",
    }
}

#[cfg(test)]
mod tests {
    use super::badge_class;

    #[test]
    fn badges_flag_a_side_in_the_wrong_language() {
        assert_eq!(badge_class(Some("toy"), Some("toy")), "ok");
        assert_eq!(badge_class(Some("en"), Some("toy")), "off");
        assert_eq!(badge_class(None, Some("en")), "unknown");
        assert_eq!(badge_class(Some("de"), None), "ok");
    }
}
