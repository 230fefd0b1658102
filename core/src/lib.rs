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

pub mod api;
pub mod error;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod generate;
pub mod gguf;
pub mod jsonl;
pub mod models;
#[cfg(feature = "net")]
pub mod openai;
pub mod parallel;
pub mod prepare;
pub mod pretrain;
pub mod pretrained;
pub mod score;
pub mod tokenizer;
pub mod toy;
pub mod train;
pub mod weights;

pub use error::{CoreError, Result};
pub use pretrained::{Pretrained, Summary};
