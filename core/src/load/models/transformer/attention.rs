//! Grouped-query attention with RoPE, optional sliding windows, query/key norms and soft
//! capping: the materialised path (HF's eager attention) or the memory-efficient one
//! (`clo_shaders::attention`), as [`AttentionKind`] picks.

use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use super::super::rope::apply_rotary;
use super::block::{project, soft_cap};

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub(super) num_heads: usize,
    pub(super) num_kv_heads: usize,
    pub(super) head_dim: usize,
    /// 0 for full causal attention.
    pub(super) sliding_window: usize,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// Factor of `q k^T` (`head_dim^-0.5`, or Gemma's `query_pre_attn_scalar^-0.5`).
    pub(super) scale: f64,
    /// Soft cap of the scores (0: none).
    pub(super) softcap: f64,
    /// This layer uses the model's local RoPE tables (Gemma 3 sliding layers).
    pub(super) local_rope: bool,
}

impl Attention {
    /// # Shapes
    /// - x: `[batch, seq, hidden]`; cos, sin: `[batch or 1, 1, seq, head_dim]`
    /// - visible: `[batch or 1, seq, cached + seq]`, which keys each query may look at
    /// - output: `[batch, seq, hidden]`
    pub(super) fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        visible: &Visible,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, hd]).swap_dims(1, 2);
        let normed = |t: Tensor<4>, norm: &Option<RmsNorm>| match norm {
            Some(norm) => norm.forward(t),
            None => t,
        };
        let q = heads(project(&self.q_proj, x.clone()), nh);
        let k = heads(project(&self.k_proj, x.clone()), nkv);
        let q = apply_rotary(normed(q, &self.q_norm), cos, sin); // [b, nh, seq, hd]
        let k = apply_rotary(normed(k, &self.k_norm), cos, sin); // [b, nkv, seq, hd]
        let v = heads(project(&self.v_proj, x), nkv);

        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));

        let mask = match visible {
            Visible::Mask(mask) => mask,
            Visible::Bias(bias) => {
                let out = clo_shaders::attention(q, k, v, bias.clone(), self.scale, self.softcap);
                let out = out.swap_dims(1, 2).reshape([batch, seq, nh * hd]);
                return project(&self.o_proj, out);
            }
        };
        let k = repeat_kv(k, nh / nkv); // [b, nh, total, hd]
        let v = repeat_kv(v, nh / nkv);
        let mut scores = q.matmul(k.swap_dims(2, 3)) * self.scale; // [b, nh, seq, total]
        if self.softcap > 0.0 {
            scores = soft_cap(scores, self.softcap);
        }
        let mask = (mask.clone()).unsqueeze_dim::<4>(1).expand(scores.dims()); // [b, nh, seq, total]
        let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
        let out = softmax(scores, 3).matmul(v); // [b, nh, seq, hd]
        let out = out.swap_dims(1, 2).reshape([batch, seq, nh * hd]);
        project(&self.o_proj, out)
    }
}

/// Repeats each key/value head for the query heads that share it, as HF's `repeat_kv`.
///
/// # Shapes
/// - x: `[batch, kv_heads, seq, head_dim]` -> `[batch, kv_heads * n_rep, seq, head_dim]`
fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, nkv, s, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, nkv, n_rep, s, hd])
        .reshape([b, nkv * n_rep, s, hd])
}

/// True where a query may not look: the future, (with a window) the too-distant past, and a
/// row's leading padding. Queries are the last `seq` of `total` positions. A padding query sees
/// only itself, so its (unused) state stays finite instead of a softmax over nothing. Built on
/// the device from position comparisons.
///
/// # Shapes
/// - output: `[padding.len() or 1, seq, total]`
pub(super) fn attention_mask(
    seq: usize,
    total: usize,
    window: usize,
    padding: &[usize],
    device: &Device,
) -> Tensor<3, Bool> {
    let rows = padding.len().max(1);
    let shape = [rows, seq, total];
    let query = Tensor::<1, Int>::arange((total - seq) as i64..total as i64, device)
        .reshape([1, seq, 1])
        .expand(shape);
    let key = Tensor::<1, Int>::arange(0..total as i64, device)
        .reshape([1, 1, total])
        .expand(shape);
    // HF: a key is visible when key <= pos and pos - key < window.
    let mut hidden = key.clone().greater(query.clone());
    if window > 0 {
        let far = (query.clone() - key.clone()).greater_equal_elem(window as i64);
        hidden = hidden.bool_or(far);
    }
    if padding.is_empty() {
        return hidden;
    }
    let pads: Vec<i64> = padding.iter().map(|&p| p as i64).collect();
    let pads =
        Tensor::<3, Int>::from_data(TensorData::new(pads, [rows, 1, 1]), device).expand(shape);
    let padding_query = query.clone().lower(pads.clone());
    let padding_key = key.clone().lower(pads);
    let not_itself = key.not_equal(query);
    padding_query.clone().bool_and(not_itself).bool_or(
        padding_query
            .bool_not()
            .bool_and(hidden.bool_or(padding_key)),
    )
}

/// How a model computes attention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKind {
    /// `clo_shaders::attention`: under autodiff it keeps `q`, `k`, `v`, the output and one
    /// log-sum-exp per query, and recomputes the scores in the backward pass (CubeCL kernels
    /// on wgpu, blocks of tensor operations on the CPU). Never forms a `[batch, heads, queries,
    /// keys]` tensor on wgpu; at most one 16 MiB block of it on the CPU. Decoding steps (one
    /// new position) use the materialised path, whose scores are one row per head.
    #[default]
    MemoryEfficient,
    /// The score matrix, its softmax and (under autodiff) their gradients, as transformers'
    /// eager attention computes them.
    Materialized,
}

impl AttentionKind {
    pub const CHOICES: &'static str = "memory-efficient or materialized";
}

impl std::fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionKind::MemoryEfficient => "memory-efficient",
            AttentionKind::Materialized => "materialized",
        })
    }
}

impl std::str::FromStr for AttentionKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory-efficient" | "flash" => Ok(AttentionKind::MemoryEfficient),
            "materialized" | "materialised" | "eager" => Ok(AttentionKind::Materialized),
            other => Err(format!("unknown attention `{other}`: {}", Self::CHOICES)),
        }
    }
}

/// Which keys each query may look at, `[rows or 1, seq, total]`, in the form its attention takes.
#[derive(Debug, Clone)]
pub(super) enum Visible {
    /// True where a query may not look (materialised attention).
    Mask(Tensor<3, Bool>),
    /// 0 where a query may look, `-inf` where not (`clo_shaders::attention`).
    Bias(Tensor<3>),
}
