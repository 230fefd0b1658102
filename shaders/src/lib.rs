//! Custom GPU kernels for clo. Each kernel lives beside a reference written in plain Burn tensor
//! ops, with a test that outputs and gradients agree (`cargo test -p clo-shaders`) and a
//! benchmark against the reference (`cargo run -p clo-shaders --example bench_logp`,
//! `--example bench_attention`).
//!
//! - [`logp`]: per-token log-probabilities `log softmax(logits)[label]` of `[rows, vocab]`
//!   logits, with a fused backward: one kernel reduces each row to its log-sum-exp, one writes
//!   the gradient `g * (onehot(label) - softmax)` in a single pass. Neither the softmax nor the
//!   shifted logits are kept for the backward.
//! - [`attention`]: memory-efficient attention with any additive mask, GQA and a soft cap: the
//!   backward recomputes the scores from `q`, `k`, `v` and one log-sum-exp per query, so no
//!   `[batch, heads, queries, keys]` tensor is kept (kernels on CubeCL, query blocks on Flex).

pub mod attention;
mod cpu;
pub mod logp;
pub mod swiglu;
#[cfg(test)]
mod test_util;

pub use attention::{AttentionBackend, attention, attention_reference};
pub use logp::{LogpBackend, token_logps, token_logps_reference};
pub use swiglu::{SwigluBackend, swiglu, swiglu_reference};
