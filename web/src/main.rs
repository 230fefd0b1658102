//! The browser entry point (Trunk builds it for wasm32 from the repository's `index.html`).

#[cfg(target_arch = "wasm32")]
fn main() {
    clo_web::app::main();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!(
        "clo-web is the browser app: build it with `trunk build` in the repository root; `clo serve` then serves it"
    );
    std::process::exit(2);
}
