//! The CubeCL kernels of [`super::AttentionBackend`] and their launch on any CubeCL runtime
//! (wgpu, WebGPU, CUDA, ...). They read f32, f16 or bf16 and accumulate in f32.
//!
//! One unit per row, no shared memory and no atomics: the forward and the `dq` kernel give a
//! unit to each query row (`[batch, heads, queries]`), the `dk`/`dv` kernel to each key row
//! (`[batch, kv_heads, keys]`), which walks the queries of every query head of its group. Each
//! unit keeps its `head_dim` accumulators in a local array. This trades speed (no tiles in
//! shared memory, no tensor cores) for memory: nothing the size of the score matrix is written.

use burn::backend::Cube;
use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::{AttentionBackend, Dims, MASKED};

/// The score of query row `q_base` against key row `k_base` after the scale and the soft cap.
#[cube]
fn score<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    q_base: usize,
    k_base: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
) -> f32 {
    let mut dot = f32::new(0.0);
    for d in 0..head_dim {
        dot += f32::cast_from(q[q_base + d]) * f32::cast_from(k[k_base + d]);
    }
    let mut s = dot * scale;
    if softcap > f32::new(0.0) {
        s = f32::tanh(s / softcap) * softcap;
    }
    s
}

/// One unit per query row: an online softmax over the visible keys.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    rows: usize,
    heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    bias_rows: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= rows {
        terminate!();
    }
    let i = row % queries;
    let bh = row / queries;
    let b = bh / heads;
    let kv = b * (heads / group) + (bh % heads) / group;
    let q_base = row * head_dim;
    let kv_base = kv * keys * head_dim;
    let bias_base = (b % bias_rows) * queries * keys + i * keys;

    let mut acc = Array::<f32>::new(head_dim);
    for d in 0..head_dim {
        acc[d] = f32::new(0.0);
    }
    let mut max = f32::new(-3.0e38);
    let mut sum = f32::new(0.0);
    for j in 0..keys {
        let bj = f32::cast_from(bias[bias_base + j]);
        if bj > f32::new(MASKED) {
            let k_base = kv_base + j * head_dim;
            let s = score::<F>(q, k, q_base, k_base, scale, softcap, head_dim);
            let s = s + bj;
            let new_max = f32::max(max, s);
            let correction = f32::exp(max - new_max);
            let p = f32::exp(s - new_max);
            sum = sum * correction + p;
            for d in 0..head_dim {
                acc[d] = acc[d] * correction + p * f32::cast_from(v[k_base + d]);
            }
            max = new_max;
        }
    }
    for d in 0..head_dim {
        out[q_base + d] = F::cast_from(acc[d] / sum);
    }
    lse[row] = F::cast_from(max + f32::ln(sum));
}

/// One unit per query row: `dq = scale * sum_j ds_ij k_j` with
/// `ds_ij = p_ij (dO_i . v_j - D_i) * cap'`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dq_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    bias: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    grad: &Tensor<F>,
    dq: &mut Tensor<F>,
    rows: usize,
    heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    bias_rows: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= rows {
        terminate!();
    }
    let i = row % queries;
    let bh = row / queries;
    let b = bh / heads;
    let kv = b * (heads / group) + (bh % heads) / group;
    let q_base = row * head_dim;
    let kv_base = kv * keys * head_dim;
    let bias_base = (b % bias_rows) * queries * keys + i * keys;
    let lse_i = f32::cast_from(lse[row]);
    let delta_i = f32::cast_from(delta[row]);

    let mut acc = Array::<f32>::new(head_dim);
    for d in 0..head_dim {
        acc[d] = f32::new(0.0);
    }
    for j in 0..keys {
        let bj = f32::cast_from(bias[bias_base + j]);
        if bj > f32::new(MASKED) {
            let k_base = kv_base + j * head_dim;
            let s = score::<F>(q, k, q_base, k_base, scale, softcap, head_dim);
            let p = f32::exp(s + bj - lse_i);
            let mut dp = f32::new(0.0);
            for d in 0..head_dim {
                dp += f32::cast_from(grad[q_base + d]) * f32::cast_from(v[k_base + d]);
            }
            let mut ds = p * (dp - delta_i) * scale;
            if softcap > f32::new(0.0) {
                // d(cap tanh(x / cap))/dx = 1 - tanh^2, and tanh = s / cap.
                let t = s / softcap;
                ds *= f32::new(1.0) - t * t;
            }
            for d in 0..head_dim {
                acc[d] += ds * f32::cast_from(k[k_base + d]);
            }
        }
    }
    for d in 0..head_dim {
        dq[q_base + d] = F::cast_from(acc[d]);
    }
}

/// One unit per key row of a key/value head: `dv_j = sum p_ij dO_i` and
/// `dk_j = scale * sum ds_ij q_i` over the queries of every query head sharing it.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dkv_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    bias: &Tensor<F>,
    lse: &Tensor<F>,
    delta: &Tensor<F>,
    grad: &Tensor<F>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    rows: usize,
    heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    bias_rows: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    if row >= rows {
        terminate!();
    }
    let j = row % keys;
    let bkv = row / keys;
    let kv_heads = heads / group;
    let b = bkv / kv_heads;
    let first_head = b * heads + (bkv % kv_heads) * group;
    let k_base = row * head_dim;
    let bias_base = (b % bias_rows) * queries * keys + j;

    let mut dk_acc = Array::<f32>::new(head_dim);
    let mut dv_acc = Array::<f32>::new(head_dim);
    for d in 0..head_dim {
        dk_acc[d] = f32::new(0.0);
        dv_acc[d] = f32::new(0.0);
    }
    for h in 0..group {
        let qh = (first_head + h) * queries;
        for i in 0..queries {
            let bj = f32::cast_from(bias[bias_base + i * keys]);
            if bj > f32::new(MASKED) {
                let qrow = qh + i;
                let q_base = qrow * head_dim;
                let s = score::<F>(q, k, q_base, k_base, scale, softcap, head_dim);
                let p = f32::exp(s + bj - f32::cast_from(lse[qrow]));
                let mut dp = f32::new(0.0);
                for d in 0..head_dim {
                    let g = f32::cast_from(grad[q_base + d]);
                    dv_acc[d] += p * g;
                    dp += g * f32::cast_from(v[k_base + d]);
                }
                let mut ds = p * (dp - f32::cast_from(delta[qrow])) * scale;
                if softcap > f32::new(0.0) {
                    let t = s / softcap;
                    ds *= f32::new(1.0) - t * t;
                }
                for d in 0..head_dim {
                    dk_acc[d] += ds * f32::cast_from(q[q_base + d]);
                }
            }
        }
    }
    for d in 0..head_dim {
        dk[k_base + d] = F::cast_from(dk_acc[d]);
        dv[k_base + d] = F::cast_from(dv_acc[d]);
    }
}

fn empty_like(t: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, dtype)
}

/// Cube and grid for one unit per row.
fn grid(t: &CubeTensor, rows: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(&t.client, rows.max(1));
    (
        calculate_cube_count_elemwise(&t.client, rows.max(1), cube_dim),
        cube_dim,
    )
}

impl AttentionBackend for Cube {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
        softcap: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dims = Dims::of(&q, &k, &bias);
        let (q, k, v, bias) = (
            into_contiguous(q),
            into_contiguous(k),
            into_contiguous(v),
            into_contiguous(bias),
        );
        let dtype = q.dtype;
        let out = empty_like(&q, q.shape(), dtype);
        let rows = dims.batch * dims.heads * dims.queries;
        let lse = empty_like(
            &q,
            Shape::new([dims.batch, dims.heads, dims.queries]),
            dtype,
        );
        if rows == 0 || dims.keys == 0 {
            return (out, lse);
        }
        let (count, cube_dim) = grid(&q, rows);
        let client = q.client.clone();
        unsafe {
            forward_kernel::launch_unchecked(
                &client,
                count,
                cube_dim,
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                bias.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                rows,
                dims.heads,
                dims.group,
                dims.queries,
                dims.keys,
                dims.bias_rows,
                scale,
                softcap,
                dims.head_dim,
                dtype_to_storage_type(dtype),
            )
        };
        (out, lse)
    }

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
        use burn::backend::ops::FloatTensorOps;
        let dims = Dims::of(&q, &k, &bias);
        let grad = into_contiguous(grad);
        // D = rowsum(dO * O): [b, heads, queries, 1].
        let delta = into_contiguous(Self::float_sum_dim(Self::float_mul(grad.clone(), out), 3));
        let (q, k, v, bias, lse) = (
            into_contiguous(q),
            into_contiguous(k),
            into_contiguous(v),
            into_contiguous(bias),
            into_contiguous(lse),
        );
        let dtype = q.dtype;
        let dq = empty_like(&q, q.shape(), dtype);
        let dk = empty_like(&k, k.shape(), dtype);
        let dv = empty_like(&v, v.shape(), dtype);
        let query_rows = dims.batch * dims.heads * dims.queries;
        let key_rows = dims.batch * dims.kv_heads * dims.keys;
        if query_rows == 0 || key_rows == 0 {
            return (dq, dk, dv);
        }
        let client = q.client.clone();
        let (count, cube_dim) = grid(&q, query_rows);
        unsafe {
            dq_kernel::launch_unchecked(
                &client,
                count,
                cube_dim,
                q.clone().into_tensor_arg(),
                k.clone().into_tensor_arg(),
                v.clone().into_tensor_arg(),
                bias.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                delta.clone().into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                dq.clone().into_tensor_arg(),
                query_rows,
                dims.heads,
                dims.group,
                dims.queries,
                dims.keys,
                dims.bias_rows,
                scale,
                softcap,
                dims.head_dim,
                dtype_to_storage_type(dtype),
            )
        };
        let (count, cube_dim) = grid(&q, key_rows);
        unsafe {
            dkv_kernel::launch_unchecked(
                &client,
                count,
                cube_dim,
                q.into_tensor_arg(),
                k.into_tensor_arg(),
                v.into_tensor_arg(),
                bias.into_tensor_arg(),
                lse.into_tensor_arg(),
                delta.into_tensor_arg(),
                grad.into_tensor_arg(),
                dk.clone().into_tensor_arg(),
                dv.clone().into_tensor_arg(),
                key_rows,
                dims.heads,
                dims.group,
                dims.queries,
                dims.keys,
                dims.bias_rows,
                scale,
                softcap,
                dims.head_dim,
                dtype_to_storage_type(dtype),
            )
        };
        (dq, dk, dv)
    }
}
