//! The CubeCL kernels of [`super::LogpBackend`] and their launch on any CubeCL runtime (wgpu,
//! WebGPU, CUDA, ...). Both read f32, f16 or bf16 logits and compute in f32.

use burn::backend::Cube;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::{LogpBackend, dims2};

/// Units per cube of the row reduction: a power of two, at most WebGPU's default limit.
const ROW_UNITS: u32 = 256;

/// One cube per row: each unit keeps an online maximum and a sum of exponentials shifted by it
/// over a strided share of the row; the cube then merges the pairs in shared memory.
#[cube(launch_unchecked)]
fn row_logsumexp_kernel<F: Float>(
    logits: &Tensor<F>,
    output: &mut Tensor<F>,
    rows: usize,
    vocab: usize,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let mut maxes = Shared::<[f32]>::new_slice(units);
    let mut sums = Shared::<[f32]>::new_slice(units);
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let base = row * vocab;
    let mut max = f32::new(-3.0e38);
    let mut sum = f32::new(0.0);
    let mut col = unit;
    while col < vocab {
        let x = f32::cast_from(logits[base + col]);
        if x > max {
            sum = sum * f32::exp(max - x) + f32::new(1.0);
            max = x;
        } else {
            sum += f32::exp(x - max);
        }
        col += units;
    }

    maxes[unit] = max;
    sums[unit] = sum;
    sync_cube();
    let mut active = CUBE_DIM as usize;
    while active > 1 {
        active /= 2;
        if unit < active {
            let other = unit + active;
            let m1 = maxes[unit];
            let m2 = maxes[other];
            let s1 = sums[unit];
            let s2 = sums[other];
            let m = f32::max(m1, m2);
            sums[unit] = s1 * f32::exp(m1 - m) + s2 * f32::exp(m2 - m);
            maxes[unit] = m;
        }
        sync_cube();
    }
    if unit == 0 {
        output[row] = F::cast_from(maxes[0] + f32::ln(sums[0]));
    }
}

/// One unit per logit: `grad[row] * (onehot(label[row]) - exp(logit - lse[row]))`, written over
/// the logit it was computed from (each unit reads its logit before it writes there).
#[cube(launch_unchecked)]
fn token_logps_backward_kernel<F: Float, I: Int>(
    logits: &mut Tensor<F>,
    labels: &Tensor<I>,
    lse: &Tensor<F>,
    grad: &Tensor<F>,
    total: usize,
    vocab: usize,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let pos = ABSOLUTE_POS;
    if pos >= total {
        terminate!();
    }
    let row = pos / vocab;
    let g = f32::cast_from(grad[row]);
    let mut d = -g * f32::exp(f32::cast_from(logits[pos]) - f32::cast_from(lse[row]));
    if usize::cast_from(labels[row]) == pos % vocab {
        d += g;
    }
    logits[pos] = F::cast_from(d);
}

/// The largest power of two up to [`ROW_UNITS`] that the device runs in one cube.
fn row_units(tensor: &CubeTensor) -> u32 {
    let limit = tensor.client.properties().hardware.max_units_per_cube;
    let mut units = ROW_UNITS;
    while units > limit.max(1) {
        units /= 2;
    }
    units
}

impl LogpBackend for Cube {
    fn row_logsumexp(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        let [rows, vocab] = dims2(&logits);
        let logits = into_contiguous(logits);
        let dtype = logits.dtype;
        let output = empty_device_dtype(
            logits.client.clone(),
            logits.device.clone(),
            Shape::new([rows]),
            dtype,
        );
        if rows == 0 {
            return output;
        }
        let units = row_units(&logits);
        let client = logits.client.clone();
        unsafe {
            row_logsumexp_kernel::launch_unchecked(
                &client,
                // One cube per row (spread over the grid's dimensions past its x limit).
                calculate_cube_count_elemwise(&client, rows, CubeDim::new_1d(1)),
                CubeDim::new_1d(units),
                logits.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                rows,
                vocab,
                units as usize,
                dtype_to_storage_type(dtype),
            )
        };
        output
    }

    fn token_logps_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [rows, vocab] = dims2(&logits);
        let total = rows * vocab;
        if total == 0 {
            return logits;
        }
        // The gradient goes over the logits. In training nothing else holds them (they come out
        // of the output layer); otherwise (a leaf, a view) they are copied first, which costs
        // the same buffer an out-of-place kernel would write.
        let logits = into_contiguous(logits);
        let logits = if logits.can_mut() && logits.is_contiguous_buffer() {
            logits
        } else {
            logits.copy()
        };
        let (labels, lse, grad) = (
            into_contiguous(labels),
            into_contiguous(lse),
            into_contiguous(grad),
        );
        let client = logits.client.clone();
        let cube_dim = CubeDim::new(&client, total);
        let cube_count = calculate_cube_count_elemwise(&client, total, cube_dim);
        let dtypes = [
            dtype_to_storage_type(logits.dtype),
            dtype_to_storage_type(labels.dtype),
        ];
        unsafe {
            token_logps_backward_kernel::launch_unchecked(
                &client,
                cube_count,
                cube_dim,
                logits.clone().into_tensor_arg(),
                labels.into_tensor_arg(),
                lse.into_tensor_arg(),
                grad.into_tensor_arg(),
                total,
                vocab,
                dtypes,
            )
        };
        logits
    }
}
