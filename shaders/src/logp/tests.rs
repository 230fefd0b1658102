//! The kernels and the fused backward against the plain reference: outputs and gradients, on
//! Flex and on wgpu (Mesa's lavapipe in CI), in f32 (tight) and f16 (a stated tolerance).

use burn::tensor::{DType, Device, DeviceKind, FloatDType, Int, Tensor, TensorData};

use crate::test_util::{floats, max_diff};

use super::{token_logps, token_logps_reference};

/// Deterministic logits in `[-scale, scale]` with a few large spikes, and labels.
fn case(rows: usize, vocab: usize, seed: u64) -> (Vec<f32>, Vec<i64>, Vec<f32>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) as f32
    };
    let logits: Vec<f32> = (0..rows * vocab)
        .map(|i| {
            let x = (next() * 2.0 - 1.0) * 8.0;
            if i % 97 == 3 { x + 40.0 } else { x }
        })
        .collect();
    let labels: Vec<i64> = (0..rows)
        .map(|_| ((next() * vocab as f32) as i64).min(vocab as i64 - 1))
        .collect();
    // The incoming gradient of each row: the last two rows are padding (masked to zero).
    let weights: Vec<f32> = (0..rows)
        .map(|r| {
            if r + 2 >= rows && rows > 2 {
                0.0
            } else {
                next() * 2.0 - 1.0
            }
        })
        .collect();
    (logits, labels, weights)
}

struct Run {
    logps: Vec<f32>,
    grad: Vec<f32>,
}

/// Which computation [`run`] differentiates.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Reference,
    /// The fused operation on the leaf: the test holds the logits, so the backward copies them
    /// before writing the gradient (wgpu) or forms a new tensor (Flex).
    Fused,
    /// The fused operation on an intermediate (`logits * 1`), as in training where the logits
    /// come out of the output layer: nothing else holds them, so the backward writes the
    /// gradient over them.
    FusedInPlace,
}

/// Differentiates `path` on the case of `seed`: the logits and the incoming gradient rounded to
/// `stored`, then computed in `dtype` (the same type, or f32 for a reference on rounded values).
fn run(
    device: &Device,
    stored: FloatDType,
    dtype: FloatDType,
    rows: usize,
    vocab: usize,
    seed: u64,
    path: Path,
) -> Run {
    let (logits, labels, weights) = case(rows, vocab, seed);
    let device = device.clone().autodiff();
    let round = |v: Vec<f32>, shape: Vec<usize>| {
        Tensor::<2>::from_data(TensorData::new(v, shape), &device)
            .cast(stored)
            .cast(dtype)
    };
    let logits = round(logits, vec![rows, vocab]).require_grad();
    let weights = round(weights, vec![1, rows]).reshape([rows]);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [rows]), &device);
    let logps = match path {
        Path::Reference => token_logps_reference(logits.clone(), labels),
        Path::Fused => token_logps(logits.clone(), labels),
        Path::FusedInPlace => token_logps(logits.clone() * 1.0, labels),
    };
    assert_eq!(
        logps.dtype(),
        DType::from(dtype),
        "log-probs keep the logits' type"
    );
    let grads = (logps.clone() * weights).sum().backward();
    let grad = logits.grad(&grads).expect("the logits have a gradient");
    Run {
        logps: floats(logps.inner()),
        grad: floats(grad),
    }
}

/// Shapes: vocab not a multiple of the kernel's 256 units, below them, one column, and a single
/// row; with padding rows (zero incoming gradient) wherever there are more than two rows.
const SHAPES: [(usize, usize); 5] = [(7, 1000), (5, 100), (3, 1), (1, 4099), (9, 256)];

fn check(device: &Device, dtype: FloatDType, out_tol: f32, grad_tol: f32) {
    for (i, &(rows, vocab)) in SHAPES.iter().enumerate() {
        let seed = 11 + i as u64;
        // The reference runs in f32 on the same (rounded) logits.
        let reference = run(
            device,
            dtype,
            FloatDType::F32,
            rows,
            vocab,
            seed,
            Path::Reference,
        );
        for path in [Path::Fused, Path::FusedInPlace] {
            let fused = run(device, dtype, dtype, rows, vocab, seed, path);
            let (out, grad) = (
                max_diff(&fused.logps, &reference.logps),
                max_diff(&fused.grad, &reference.grad),
            );
            assert!(
                out <= out_tol && grad <= grad_tol,
                "{dtype:?} [{rows}, {vocab}] on {device:?}, in place: {}: log-probs differ by {out} (tolerance \
             {out_tol}), gradients by {grad} (tolerance {grad_tol})",
                path == Path::FusedInPlace
            );
            if rows > 2 {
                let padding = &fused.grad[(rows - 2) * vocab..];
                assert!(
                    padding.iter().all(|g| *g == 0.0),
                    "padding rows get no gradient"
                );
            }
            assert!(fused.logps.iter().all(|l| l.is_finite() && *l <= 1e-3));
        }
    }
}

#[test]
fn fused_log_probs_equal_the_reference_on_flex() {
    check(&Device::flex(), FloatDType::F32, 2e-5, 5e-6);
    check(&Device::flex(), FloatDType::F16, 5e-2, 1e-2);
}

#[test]
fn fused_log_probs_equal_the_reference_on_wgpu() {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    check(&device, FloatDType::F32, 2e-5, 5e-6);
    if device.supports_dtype(DType::F16) {
        check(&device, FloatDType::F16, 5e-2, 1e-2);
    }
}

#[test]
fn without_autodiff_the_kernels_give_the_reference() {
    for device in [Device::flex(), Device::wgpu(DeviceKind::DefaultDevice)] {
        let (logits, labels, _) = case(6, 777, 5);
        let logits = Tensor::<2>::from_data(TensorData::new(logits, [6, 777]), &device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [6]), &device);
        let fused = floats(token_logps(logits.clone(), labels.clone()));
        let reference = floats(token_logps_reference(logits, labels));
        assert!(max_diff(&fused, &reference) <= 2e-5, "{device:?}");
    }
}
