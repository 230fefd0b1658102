//! The CubeCL kernels of [`super::AttentionBackend`] and their launch on any CubeCL runtime
//! (wgpu, WebGPU, CUDA, ...). They read f32, f16 or bf16 and accumulate in f32.
//!
//! One unit per row and no atomics: the forward and the `dq` kernel give a unit to each query
//! row (`[batch, heads, queries]`), the `dk`/`dv` kernel to each key row (`[batch, kv_heads,
//! keys]`), which walks the queries of every query head of its group. A cube holds 64 rows of
//! one head; it loads the other side's rows tile by tile into shared memory, where all its units
//! read them. Each unit keeps its own row and its `head_dim` accumulators in local arrays.
//! Nothing the size of the score matrix is written. The products are plain f32 multiply-adds:
//! no tensor cores.

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

/// Units per cube: rows of one head handled together, sharing each tile of the other side.
const BLOCK_UNITS: u32 = 64;

/// Floats per tile of the other side's rows (`tile x head_dim`, two tiles at a time): 2 x 2048
/// f32 is 16 KiB, WebGPU's default workgroup storage.
const TILE_FLOATS: usize = 2048;

#[cfg(test)]
thread_local! {
    /// Cubes of 4 units and tiles of 24 floats on this thread, so that the tests' small cases
    /// span several of each; the tests turn it off to check the real sizes too.
    pub(super) static SMALL_TILES: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// `dot(a[a_base..], shared[s_base..])` over `head_dim`, for a row held in a local array.
#[cube]
fn dot_local(
    a: &Array<f32>,
    shared: &Shared<[f32]>,
    s_base: usize,
    #[comptime] head_dim: usize,
) -> f32 {
    let mut dot = f32::new(0.0);
    for d in 0..head_dim {
        dot += a[d] * shared[s_base + d];
    }
    dot
}

/// Where the query row of this unit is: a cube per block of `CUBE_DIM` query rows of one head.
#[derive(CubeType)]
struct QueryRow {
    /// The row exists (the last block of a head may be partly empty).
    active: bool,
    /// Index of the row in `[batch, heads, queries]`.
    row: usize,
    /// First row of its key/value head in `[batch, kv_heads, keys]`.
    kv_row: usize,
    /// Start of its bias row.
    bias_base: usize,
}

#[cube]
fn query_row(
    heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    bias_rows: usize,
) -> QueryRow {
    let per_head = queries.div_ceil(CUBE_DIM as usize);
    let bh = CUBE_POS / per_head;
    let i = (CUBE_POS % per_head) * CUBE_DIM as usize + UNIT_POS as usize;
    let b = bh / heads;
    QueryRow {
        active: i < queries,
        row: bh * queries + i,
        kv_row: (b * (heads / group) + (bh % heads) / group) * keys,
        bias_base: (b % bias_rows) * queries * keys + i * keys,
    }
}

/// `dst` set to row `row` of a `[.., head_dim]` tensor, in f32 (zeros when `active` is false).
#[cube]
fn fill_row<F: Float>(
    dst: &mut Array<f32>,
    src: &Tensor<F>,
    row: usize,
    active: bool,
    #[comptime] head_dim: usize,
) {
    for d in 0..head_dim {
        dst[d] = f32::new(0.0);
        if active {
            dst[d] = f32::cast_from(src[row * head_dim + d]);
        }
    }
}

/// `dst` set to zeros.
#[cube]
fn zeros(dst: &mut Array<f32>, #[comptime] head_dim: usize) {
    for d in 0..head_dim {
        dst[d] = f32::new(0.0);
    }
}

/// `scale` and the soft cap applied to a raw product.
#[cube]
fn capped(dot: f32, scale: f32, softcap: f32) -> f32 {
    let mut s = dot * scale;
    if softcap > f32::new(0.0) {
        s = f32::tanh(s / softcap) * softcap;
    }
    s
}

/// Rows `first..first + count` of a `[.., rows, head_dim]` tensor (from row `base_row`) into
/// shared memory, by all the cube's units together; rows past `limit` are left as they are.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tile<F: Float>(
    src: &Tensor<F>,
    dst: &mut Shared<[f32]>,
    base_row: usize,
    first: usize,
    limit: usize,
    #[comptime] tile: usize,
    #[comptime] head_dim: usize,
) {
    let mut idx = UNIT_POS as usize;
    while idx < tile * head_dim {
        let row = first + idx / head_dim;
        if row < limit {
            dst[idx] = f32::cast_from(src[(base_row + row) * head_dim + idx % head_dim]);
        }
        idx += CUBE_DIM as usize;
    }
}

/// A cube per block of query rows of one head; each unit one query row: an online softmax over
/// the visible keys, which the cube loads tile by tile into shared memory.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn forward_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    blocks: usize,
    heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    bias_rows: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
    #[comptime] tile: usize,
    #[define(F)] _dtype: ElemType,
) {
    let mut k_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let mut v_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    if CUBE_POS >= blocks {
        terminate!();
    }
    let at = query_row(heads, group, queries, keys, bias_rows);
    let (active, row, kv_row, bias_base) = (at.active, at.row, at.kv_row, at.bias_base);
    let mut q_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    fill_row::<F>(&mut q_row, q, row, active, head_dim);
    zeros(&mut acc, head_dim);
    let mut max = f32::new(-3.0e38);
    let mut sum = f32::new(0.0);
    let mut j0 = 0;
    while j0 < keys {
        load_tile::<F>(k, &mut k_tile, kv_row, j0, keys, tile, head_dim);
        load_tile::<F>(v, &mut v_tile, kv_row, j0, keys, tile, head_dim);
        sync_cube();
        if active {
            for jj in 0..tile {
                let j = j0 + jj;
                if j < keys {
                    let bj = f32::cast_from(bias[bias_base + j]);
                    if bj > f32::new(MASKED) {
                        let dot = dot_local(&q_row, &k_tile, jj * head_dim, head_dim);
                        let s = capped(dot, scale, softcap) + bj;
                        let new_max = f32::max(max, s);
                        let correction = f32::exp(max - new_max);
                        let p = f32::exp(s - new_max);
                        sum = sum * correction + p;
                        for d in 0..head_dim {
                            acc[d] = acc[d] * correction + p * v_tile[jj * head_dim + d];
                        }
                        max = new_max;
                    }
                }
            }
        }
        sync_cube();
        j0 += tile;
    }
    if active {
        for d in 0..head_dim {
            out[row * head_dim + d] = F::cast_from(acc[d] / sum);
        }
        lse[row] = F::cast_from(max + f32::ln(sum));
    }
}

/// A cube per block of query rows of one head; each unit one query row:
/// `dq = scale * sum_j ds_ij k_j` with `ds_ij = p_ij (dO_i . v_j - D_i) * cap'`.
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
    blocks: usize,
    heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    bias_rows: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
    #[comptime] tile: usize,
    #[define(F)] _dtype: ElemType,
) {
    let mut k_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let mut v_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    if CUBE_POS >= blocks {
        terminate!();
    }
    let at = query_row(heads, group, queries, keys, bias_rows);
    let (active, row, kv_row, bias_base) = (at.active, at.row, at.kv_row, at.bias_base);
    let mut lse_i = f32::new(0.0);
    let mut delta_i = f32::new(0.0);
    if active {
        lse_i = f32::cast_from(lse[row]);
        delta_i = f32::cast_from(delta[row]);
    }

    let mut q_row = Array::<f32>::new(head_dim);
    let mut g_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    fill_row::<F>(&mut q_row, q, row, active, head_dim);
    fill_row::<F>(&mut g_row, grad, row, active, head_dim);
    zeros(&mut acc, head_dim);
    let mut j0 = 0;
    while j0 < keys {
        load_tile::<F>(k, &mut k_tile, kv_row, j0, keys, tile, head_dim);
        load_tile::<F>(v, &mut v_tile, kv_row, j0, keys, tile, head_dim);
        sync_cube();
        if active {
            for jj in 0..tile {
                let j = j0 + jj;
                if j < keys {
                    let bj = f32::cast_from(bias[bias_base + j]);
                    if bj > f32::new(MASKED) {
                        let base = jj * head_dim;
                        let s = capped(dot_local(&q_row, &k_tile, base, head_dim), scale, softcap);
                        let p = f32::exp(s + bj - lse_i);
                        let dp = dot_local(&g_row, &v_tile, base, head_dim);
                        let mut ds = p * (dp - delta_i) * scale;
                        if softcap > f32::new(0.0) {
                            // d(cap tanh(x / cap))/dx = 1 - tanh^2, and tanh = s / cap.
                            let t = s / softcap;
                            ds *= f32::new(1.0) - t * t;
                        }
                        for d in 0..head_dim {
                            acc[d] += ds * k_tile[base + d];
                        }
                    }
                }
            }
        }
        sync_cube();
        j0 += tile;
    }
    if active {
        for d in 0..head_dim {
            dq[row * head_dim + d] = F::cast_from(acc[d]);
        }
    }
}

/// A cube per block of key rows of one key/value head; each unit one key row:
/// `dv_j = sum p_ij dO_i` and `dk_j = scale * sum ds_ij q_i` over the queries of every query head
/// sharing it, which the cube loads tile by tile (with their `dO`) into shared memory.
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
    blocks: usize,
    heads: usize,
    group: usize,
    queries: usize,
    keys: usize,
    bias_rows: usize,
    scale: f32,
    softcap: f32,
    #[comptime] head_dim: usize,
    #[comptime] tile: usize,
    #[define(F)] _dtype: ElemType,
) {
    let mut q_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let mut g_tile = Shared::<[f32]>::new_slice(tile * head_dim);
    let per_head = keys.div_ceil(CUBE_DIM as usize);
    let cube = CUBE_POS;
    if cube >= blocks {
        terminate!();
    }
    let bkv = cube / per_head;
    let j = (cube % per_head) * CUBE_DIM as usize + UNIT_POS as usize;
    let active = j < keys;
    let kv_heads = heads / group;
    let b = bkv / kv_heads;
    let first_head = b * heads + (bkv % kv_heads) * group;
    let row = bkv * keys + j;
    let bias_base = (b % bias_rows) * queries * keys + j;

    let mut k_row = Array::<f32>::new(head_dim);
    let mut v_row = Array::<f32>::new(head_dim);
    let mut dk_acc = Array::<f32>::new(head_dim);
    let mut dv_acc = Array::<f32>::new(head_dim);
    fill_row::<F>(&mut k_row, k, row, active, head_dim);
    fill_row::<F>(&mut v_row, v, row, active, head_dim);
    zeros(&mut dk_acc, head_dim);
    zeros(&mut dv_acc, head_dim);
    for h in 0..group {
        let q_row0 = (first_head + h) * queries;
        let mut i0 = 0;
        while i0 < queries {
            load_tile::<F>(q, &mut q_tile, q_row0, i0, queries, tile, head_dim);
            load_tile::<F>(grad, &mut g_tile, q_row0, i0, queries, tile, head_dim);
            sync_cube();
            if active {
                for ii in 0..tile {
                    let i = i0 + ii;
                    if i < queries {
                        let bj = f32::cast_from(bias[bias_base + i * keys]);
                        if bj > f32::new(MASKED) {
                            let qrow = q_row0 + i;
                            let base = ii * head_dim;
                            let s =
                                capped(dot_local(&k_row, &q_tile, base, head_dim), scale, softcap);
                            let p = f32::exp(s + bj - f32::cast_from(lse[qrow]));
                            let dp = dot_local(&v_row, &g_tile, base, head_dim);
                            let mut ds = p * (dp - f32::cast_from(delta[qrow])) * scale;
                            if softcap > f32::new(0.0) {
                                let t = s / softcap;
                                ds *= f32::new(1.0) - t * t;
                            }
                            for d in 0..head_dim {
                                dv_acc[d] += p * g_tile[base + d];
                                dk_acc[d] += ds * q_tile[base + d];
                            }
                        }
                    }
                }
            }
            sync_cube();
            i0 += tile;
        }
    }
    if active {
        for d in 0..head_dim {
            dk[row * head_dim + d] = F::cast_from(dk_acc[d]);
            dv[row * head_dim + d] = F::cast_from(dv_acc[d]);
        }
    }
}

fn empty_like(t: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape, dtype)
}

/// Units per cube (at most the device's limit) and the tile of the other side's rows.
fn shape_of(t: &CubeTensor, head_dim: usize) -> (u32, usize) {
    let limit = t.client.properties().hardware.max_units_per_cube.max(1);
    #[cfg(test)]
    if SMALL_TILES.with(|small| small.get()) {
        return (4.min(limit), (24 / head_dim.max(1)).max(1));
    }
    (
        BLOCK_UNITS.min(limit),
        (TILE_FLOATS / head_dim.max(1)).max(1),
    )
}

/// The grid of one cube per block of `units` rows of each of `heads` heads of `rows` rows.
fn grid(t: &CubeTensor, heads: usize, rows: usize, units: u32) -> (CubeCount, CubeDim, usize) {
    let blocks = heads * rows.div_ceil(units as usize);
    (
        // Spread over the grid's dimensions past its x limit; extra cubes stop at once.
        calculate_cube_count_elemwise(&t.client, blocks.max(1), CubeDim::new_1d(1)),
        CubeDim::new_1d(units),
        blocks,
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
        let (units, tile) = shape_of(&q, dims.head_dim);
        let (count, cube_dim, blocks) = grid(&q, dims.batch * dims.heads, dims.queries, units);
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
                blocks,
                dims.heads,
                dims.group,
                dims.queries,
                dims.keys,
                dims.bias_rows,
                scale,
                softcap,
                dims.head_dim,
                tile,
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
        let dims = Dims::of(&q, &k, &bias);
        let grad = into_contiguous(grad);

        let delta = into_contiguous(super::row_delta::<Self>(grad.clone(), out));
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
        let (units, tile) = shape_of(&q, dims.head_dim);
        let (count, cube_dim, blocks) = grid(&q, dims.batch * dims.heads, dims.queries, units);
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
                blocks,
                dims.heads,
                dims.group,
                dims.queries,
                dims.keys,
                dims.bias_rows,
                scale,
                softcap,
                dims.head_dim,
                tile,
                dtype_to_storage_type(dtype),
            )
        };
        let (count, cube_dim, blocks) = grid(&q, dims.batch * dims.kv_heads, dims.keys, units);
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
                blocks,
                dims.heads,
                dims.group,
                dims.queries,
                dims.keys,
                dims.bias_rows,
                scale,
                softcap,
                dims.head_dim,
                tile,
                dtype_to_storage_type(dtype),
            )
        };
        (dq, dk, dv)
    }
}
