//! `clo-core`: the Llama-family model core of clo (models, tokenizer, scoring, generation),
//! generic over Burn's runtime devices (Flex on the CPU, wgpu on GPUs and in browsers).
//!
//! ```no_run
//! use burn::prelude::Device;
//! use clo_core::{Pretrained, generate::{generate, SamplingConfig}};
//! # fn main() -> clo_core::Result<()> {
//! let device = Device::default();
//! let lm = Pretrained::load("path/to/model".as_ref(), &device)?;
//! let prompt = lm.tokenizer.prompt_ids("Habari?", true)?;
//! let out = generate(&lm.model, &prompt, lm.tokenizer.eos_ids(),
//!     &SamplingConfig::default(), &device, |_| {});
//! println!("{}", lm.tokenizer.decode(&out.ids, true)?);
//! # Ok(()) }
//! ```

// The pipeline, stage by stage: load a model, prepare data, train, run, evaluate, export.
pub mod data;
pub mod eval;
pub mod export;
pub mod infer;
pub mod load;
/// The toy world, its shipped model and the quickstart (a cargo feature: the browser build
/// leaves the 3 MB model out unless asked).
#[cfg(feature = "toy")]
pub mod toy;
pub mod train;

// Shared by the stages.
pub mod api;
pub mod bench;
pub mod error;
pub mod fsutil;
pub mod limits;
#[cfg(feature = "net")]
pub mod openai;
pub mod parallel;

// The paths these modules had before the stages were folders, kept for the binary, the tests
// and other users of the library.
pub use data::{jsonl, prepare};
pub use infer::{generate, score};
pub use load::{gguf, models, pretrained, tokenizer, weights};
pub use train::pretrain;

pub use error::{CoreError, Result};
pub use pretrained::{Pretrained, Summary};

/// Seeds `device` and runs `init` (drawing random weights) while no other test does: a device's
/// random state is shared by the threads of the test harness, so two seeded draws interleaved
/// would differ from run to run.
#[cfg(test)]
pub(crate) fn seeded<T>(device: &burn::tensor::Device, seed: u64, init: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    init()
}

/// Polls a future that never waits to its end (in tests, the CPU backend's awaited reads are
/// ready at once).
#[cfg(test)]
pub(crate) fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
