//! Memory-efficient attention for training: `softmax(cap(q k^T * scale) + bias) v`, with a
//! backward that recomputes the scores instead of keeping them.
//!
//! The materialised attention ([`attention_reference`], what autodiff differentiates op by op)
//! keeps the `[batch, heads, queries, keys]` softmax of every layer for the backward pass, plus
//! the scores and their gradient while differentiating, and repeats each key/value head for the
//! query heads that share it (GQA). [`attention`] keeps only `q`, `k`, `v` (unrepeated), the
//! output and one log-sum-exp per query (`[batch, heads, queries]`):
//! - wgpu (any CubeCL runtime): three CubeCL kernels in [`kernel`]. The forward gives one unit
//!   to each query row: an online softmax over the visible keys, the output accumulated in f32.
//!   The backward's `dq` kernel walks the keys of each query row, its `dk`/`dv` kernel the
//!   queries (of every head of the group) of each key row, so neither needs atomics. No score
//!   matrix is ever stored.
//! - Flex (the CPU), and the trait's default on any backend: the same recomputation written with
//!   tensor operations over blocks of queries, so at most one `[batch, heads, block, keys]` score
//!   block exists at a time.
//! - under autodiff: one graph node with that backward.
//!
//! The mask comes as an additive `[1 or batch, queries, keys]` bias (0 where a query may look,
//! `-inf` where it may not; any finite bias, such as ALiBi, works too), so causal masks, sliding
//! windows and left padding all take the same path. Every query row must see at least one key.
//! Gemma 2's soft cap `cap * tanh(s / cap)` is applied to the scaled scores before the bias,
//! as in transformers.

mod autodiff;
mod kernel;

#[cfg(test)]
mod tests;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{Shape, Slice, Tensor, activation::softmax};

/// Bias at or below this is a masked key: the kernels skip it.
pub(crate) const MASKED: f32 = -1.0e30;

/// Elements of one score block of the tensor-op path (`[batch, heads, block, keys]`): 4 Mi
/// floats, 16 MiB in f32. The tests use small blocks, so that every case spans several.
#[cfg(not(test))]
const BLOCK_ELEMENTS: usize = 1 << 22;
#[cfg(test)]
const BLOCK_ELEMENTS: usize = 200;

/// The operations of memory-efficient attention, on every backend. The default bodies compute
/// block by block with tensor operations (Flex uses them); the CubeCL backend overrides both with
/// kernels, and `Autodiff` overrides [`AttentionBackend::attention_output`] with one node whose backward
/// is [`AttentionBackend::attention_backward`].
///
/// Shapes: `q` `[batch, heads, queries, head_dim]`; `k`, `v` `[batch, kv_heads, keys,
/// head_dim]` with `heads` a multiple of `kv_heads` (query head `h` reads key/value head
/// `h / (heads / kv_heads)`); `bias` `[1 or batch, queries, keys]`.
#[backend_extension(Autodiff, Flex, Cube)]
pub trait AttentionBackend: Backend {
    /// The attention output `[batch, heads, queries, head_dim]` and the log-sum-exp of each
    /// query row's scores `[batch, heads, queries]`. `softcap` 0 means none.
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
        softcap: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dims = Dims::of(&q, &k, &bias);
        let (mut outs, mut lses) = (Vec::new(), Vec::new());
        for (start, end) in dims.blocks() {
            let (scores, _) =
                block_scores::<Self>(&dims, (&q, &k, &bias), (start, end), (scale, softcap));
            let max = Self::float_max_dim(scores.clone(), 4); // [b, kv, g, n, 1]
            let exp = Self::float_exp(Self::float_sub(scores, max.clone()));
            let sum = Self::float_sum_dim(exp.clone(), 4);
            let probs = Self::float_div(exp, sum.clone());
            let out = Self::float_matmul(
                dims.grouped::<Self>(probs, end - start, dims.keys),
                v.clone(),
            );
            outs.push(dims.ungrouped::<Self>(out, end - start, dims.head_dim));
            let lse = Self::float_add(Self::float_log(sum), max);
            lses.push(dims.ungrouped::<Self>(lse, end - start, 1));
        }
        let lse = Self::float_cat(lses, 2);
        let lse = Self::float_reshape(lse, Shape::new([dims.batch, dims.heads, dims.queries]));
        (Self::float_cat(outs, 2), lse)
    }

    /// The gradients of `q`, `k` and `v` given the forward's output and log-sum-exp and the
    /// output's gradient `grad` (`[batch, heads, queries, head_dim]`).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        softcap: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let dims = Dims::of(&q, &k, &bias);

        let delta = row_delta::<Self>(grad.clone(), out);
        let lse = Self::float_reshape(lse, Shape::new([dims.batch, dims.heads, dims.queries, 1]));
        let (mut dq, mut dk, mut dv) = (Vec::new(), None, None);
        let add = |acc: Option<FloatTensor<Self>>, x| match acc {
            Some(acc) => Some(Self::float_add(acc, x)),
            None => Some(x),
        };
        for (start, end) in dims.blocks() {
            let n = end - start;
            let rows = |t: &FloatTensor<Self>, width: usize| {
                let t = slice_axis::<Self>(t.clone(), 2, start, end);
                dims.grouped::<Self>(t, n, width)
            };
            let (scores, capped) =
                block_scores::<Self>(&dims, (&q, &k, &bias), (start, end), (scale, softcap));
            let lse = Self::float_reshape(
                slice_axis::<Self>(lse.clone(), 2, start, end),
                Shape::new([dims.batch, dims.kv_heads, dims.group, n, 1]),
            );
            let probs =
                dims.grouped::<Self>(Self::float_exp(Self::float_sub(scores, lse)), n, dims.keys); // [b, kv, g * n, keys]
            let grad_rows = rows(&grad, dims.head_dim);
            dv = add(
                dv,
                Self::float_matmul(Self::float_transpose(probs.clone()), grad_rows.clone()),
            );
            let dp = Self::float_matmul(grad_rows, Self::float_transpose(v.clone()));
            let ds = Self::float_mul(probs, Self::float_sub(dp, rows(&delta, 1)));
            // Through the soft cap: d(cap * tanh(x / cap))/dx = 1 - tanh^2.
            let ds = match capped {
                Some(tanh) => {
                    let tanh = dims.grouped::<Self>(tanh, n, dims.keys);
                    let slope = Self::float_neg(Self::float_mul(tanh.clone(), tanh));
                    Self::float_mul(ds, Self::float_add_scalar(slope, 1.0f32.into()))
                }
                None => ds,
            };
            let ds = Self::float_mul_scalar(ds, scale.into());
            dq.push(dims.ungrouped::<Self>(
                Self::float_matmul(ds.clone(), k.clone()),
                n,
                dims.head_dim,
            ));
            dk = add(
                dk,
                Self::float_matmul(Self::float_transpose(ds), rows(&q, dims.head_dim)),
            );
        }
        (
            Self::float_cat(dq, 2),
            dk.expect("at least one query"),
            dv.expect("at least one query"),
        )
    }

    /// The attention output `[batch, heads, queries, head_dim]` (see [`attention`]).
    fn attention_output(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
        softcap: f32,
    ) -> FloatTensor<Self> {
        Self::attention_forward(q, k, v, bias, scale, softcap).0
    }
}

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
    bias_rows: usize,
}

impl Dims {
    fn of<T: TensorMetadata>(q: &T, k: &T, bias: &T) -> Self {
        let (q, k, bias) = (q.shape(), k.shape(), bias.shape());
        assert!(
            q.num_dims() == 4 && k.num_dims() == 4 && bias.num_dims() == 3,
            "attention takes q [batch, heads, queries, head_dim], k and v [batch, kv_heads, \
             keys, head_dim] and a bias [1 or batch, queries, keys]"
        );
        let (heads, kv_heads) = (q[1], k[1]);
        assert!(
            kv_heads > 0 && heads % kv_heads == 0,
            "{heads} query heads do not share {kv_heads} key/value heads evenly"
        );
        assert!(
            bias[1] == q[2] && bias[2] == k[2] && (bias[0] == 1 || bias[0] == q[0]),
            "the bias must be [1 or {}, {}, {}], not {:?}",
            q[0],
            q[2],
            k[2],
            bias.as_slice()
        );
        Self {
            batch: q[0],
            heads,
            kv_heads,
            group: heads / kv_heads,
            queries: q[2],
            keys: k[2],
            head_dim: q[3],
            bias_rows: bias[0],
        }
    }

    /// Query ranges of at most [`BLOCK_ELEMENTS`] scores each.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let per_query = (self.batch * self.heads * self.keys).max(1);
        let block = (BLOCK_ELEMENTS / per_query).clamp(1, self.queries.max(1));
        let queries = self.queries;
        (0..queries)
            .step_by(block)
            .map(move |start| (start, (start + block).min(queries)))
    }

    /// `[b, heads, n, w]` (or `[b, kv, g, n, w]`) as `[b, kv, g * n, w]`: the rows of a group's
    /// query heads stacked, so one matmul against the group's key/value head serves them all.
    fn grouped<B: Backend>(&self, t: FloatTensor<B>, n: usize, w: usize) -> FloatTensor<B> {
        B::float_reshape(
            t,
            Shape::new([self.batch, self.kv_heads, self.group * n, w]),
        )
    }

    /// The inverse of [`Dims::grouped`]: `[b, heads, n, w]`.
    fn ungrouped<B: Backend>(&self, t: FloatTensor<B>, n: usize, w: usize) -> FloatTensor<B> {
        B::float_reshape(t, Shape::new([self.batch, self.heads, n, w]))
    }
}

/// Positions `start..end` of axis `axis` of `t`, every position of the other axes.
fn slice_axis<B: Backend>(
    t: FloatTensor<B>,
    axis: usize,
    start: usize,
    end: usize,
) -> FloatTensor<B> {
    let shape = t.shape();
    let slices: Vec<Slice> = (0..shape.num_dims())
        .map(|d| {
            let (a, b) = if d == axis {
                (start, end)
            } else {
                (0, shape[d])
            };
            Slice::new(a as isize, Some(b as isize), 1)
        })
        .collect();
    B::float_slice(t, &slices)
}

/// The scores of queries `start..end`: `cap(q k^T * scale) + bias` as `[b, kv, g, n, keys]`,
/// and (with a soft cap) the tanh it went through, in the same shape.
fn block_scores<B: Backend>(
    dims: &Dims,
    (q, k, bias): (&FloatTensor<B>, &FloatTensor<B>, &FloatTensor<B>),
    (start, end): (usize, usize),
    (scale, softcap): (f32, f32),
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let n = end - start;
    let grouped = Shape::new([dims.batch, dims.kv_heads, dims.group * n, dims.head_dim]);
    let q = B::float_reshape(slice_axis::<B>(q.clone(), 2, start, end), grouped);
    let scores = B::float_mul_scalar(
        B::float_matmul(q, B::float_transpose(k.clone())),
        scale.into(),
    );
    let five = Shape::new([dims.batch, dims.kv_heads, dims.group, n, dims.keys]);
    let scores = B::float_reshape(scores, five.clone());
    let (scores, tanh) = if softcap > 0.0 {
        let tanh = B::float_tanh(B::float_div_scalar(scores, softcap.into()));
        (
            B::float_mul_scalar(tanh.clone(), softcap.into()),
            Some(tanh),
        )
    } else {
        (scores, None)
    };
    let bias = slice_axis::<B>(bias.clone(), 1, start, end);
    let bias = B::float_reshape(bias, Shape::new([dims.bias_rows, 1, 1, n, dims.keys]));
    let bias = B::float_expand(bias, five);
    (B::float_add(scores, bias), tanh)
}

/// `D = rowsum(dO * O)`, `[b, heads, queries, 1]`: the softmax backward's correction of each
/// query row, from the output's gradient and the output.
fn row_delta<B: Backend>(grad: FloatTensor<B>, out: FloatTensor<B>) -> FloatTensor<B> {
    B::float_sum_dim(B::float_mul(grad, out), 3)
}

impl AttentionBackend for burn::backend::Flex {}

/// `softmax(cap(q k^T * scale) + bias) v` per head, with the memory-efficient backward under
/// autodiff (see the module's documentation). `softcap` 0 means none.
///
/// # Shapes
/// - q: `[batch, heads, queries, head_dim]`; k, v: `[batch, kv_heads, keys, head_dim]`
/// - bias: `[1 or batch, queries, keys]`, 0 where a query may look and `-inf` where not
/// - output: `[batch, heads, queries, head_dim]`
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Tensor<3>,
    scale: f64,
    softcap: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as AttentionBackend>::attention_output(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        bias.into_dispatch(),
        scale as f32,
        softcap as f32,
    ))
}

/// The materialised reference of [`attention`], differentiated by autodiff op by op: key and
/// value heads repeated for their query heads, the full score matrix, softmax, product.
pub fn attention_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Tensor<3>,
    scale: f64,
    softcap: f64,
) -> Tensor<4> {
    let [batch, heads, queries, _] = q.dims();
    let [_, kv_heads, keys, head_dim] = k.dims();
    let repeat = |x: Tensor<4>| {
        let n = heads / kv_heads;
        x.unsqueeze_dim::<5>(2)
            .expand([batch, kv_heads, n, keys, head_dim])
            .reshape([batch, heads, keys, head_dim])
    };
    let mut scores = q.matmul(repeat(k).swap_dims(2, 3)) * scale;
    if softcap > 0.0 {
        scores = burn::tensor::activation::tanh(scores / softcap) * softcap;
    }
    let scores = scores
        + bias
            .unsqueeze_dim::<4>(1)
            .expand([batch, heads, queries, keys]);
    softmax(scores, 3).matmul(repeat(v))
}
