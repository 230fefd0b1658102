//! Memory-efficient attention against the materialised reference: outputs and the gradients of
//! `q`, `k` and `v`, on Flex (several query blocks per case) and on wgpu (the kernels, with
//! several cubes and tiles per case, then with the real sizes), with
//! causal masks, GQA, sliding windows, left padding, cached keys and Gemma 2's soft cap.

use burn::tensor::{DType, Device, DeviceKind, FloatDType, Tensor, TensorData};

use crate::test_util::{floats, max_diff};

use super::{attention, attention_reference};

/// One attention call: `heads` query heads over `kv_heads` key/value heads, `queries` new
/// positions after `keys - queries` cached ones.
#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    queries: usize,
    keys: usize,
    head_dim: usize,
    window: usize,
    /// Leading padding positions of the rows (the first `batch` entries).
    padding: [usize; 2],
    softcap: f64,
}

const CASES: [Case; 6] = [
    // Causal with GQA (two query heads per key/value head).
    Case {
        batch: 2,
        heads: 4,
        kv_heads: 2,
        queries: 7,
        keys: 7,
        head_dim: 8,
        window: 0,
        padding: [0, 0],
        softcap: 0.0,
    },
    // A sliding window of 3 and left padding, all heads on one key/value head.
    Case {
        batch: 2,
        heads: 3,
        kv_heads: 1,
        queries: 9,
        keys: 9,
        head_dim: 16,
        window: 3,
        padding: [0, 4],
        softcap: 0.0,
    },
    // Gemma 2's soft cap, without GQA.
    Case {
        batch: 1,
        heads: 2,
        kv_heads: 2,
        queries: 6,
        keys: 6,
        head_dim: 4,
        window: 0,
        padding: [0, 0],
        softcap: 2.0,
    },
    // Two new queries after four cached keys, one padded row (generation).
    Case {
        batch: 2,
        heads: 2,
        kv_heads: 1,
        queries: 2,
        keys: 6,
        head_dim: 8,
        window: 0,
        padding: [1, 0],
        softcap: 0.0,
    },
    // A head size of 64, as the real models have.
    Case {
        batch: 1,
        heads: 2,
        kv_heads: 1,
        queries: 5,
        keys: 5,
        head_dim: 64,
        window: 0,
        padding: [0, 0],
        softcap: 0.0,
    },
    // More queries than a real cube's 64 rows and more keys than its tile of 32, with padding.
    Case {
        batch: 2,
        heads: 2,
        kv_heads: 1,
        queries: 70,
        keys: 70,
        head_dim: 64,
        window: 0,
        padding: [0, 9],
        softcap: 0.0,
    },
];

/// Deterministic values in `[-scale, scale]`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(7);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The model's mask as a bias: 0 where a query may look, `-inf` where not. A padding query sees
/// only itself.
fn bias(case: &Case) -> Vec<f32> {
    let mut out = Vec::new();
    for b in 0..case.batch {
        let pad = case.padding[b];
        for i in 0..case.queries {
            let pos = case.keys - case.queries + i;
            for j in 0..case.keys {
                let visible = if pos < pad {
                    j == pos
                } else {
                    j <= pos && j >= pad && (case.window == 0 || pos - j < case.window)
                };
                out.push(if visible { 0.0 } else { f32::NEG_INFINITY });
            }
        }
    }
    out
}

struct Run {
    out: Vec<f32>,
    grads: [Vec<f32>; 3],
}

/// Differentiates `sum(attention(q, k, v) * w)` on `case`, its inputs rounded to `stored` and
/// computed in `dtype`.
fn run(device: &Device, case: &Case, stored: FloatDType, dtype: FloatDType, fused: bool) -> Run {
    let device = device.clone().autodiff();
    let c = case;
    let q_shape = [c.batch, c.heads, c.queries, c.head_dim];
    let kv_shape = [c.batch, c.kv_heads, c.keys, c.head_dim];
    let tensor = |v: Vec<f32>, shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(v, shape), &device)
            .cast(stored)
            .cast(dtype)
            .require_grad()
    };
    let n = |s: [usize; 4]| s.iter().product::<usize>();
    let q = tensor(values(n(q_shape), 1, 1.5), q_shape);
    let k = tensor(values(n(kv_shape), 2, 1.5), kv_shape);
    let v = tensor(values(n(kv_shape), 3, 1.0), kv_shape);
    let w = tensor(values(n(q_shape), 4, 1.0), q_shape).detach();
    let bias = Tensor::<3>::from_data(
        TensorData::new(bias(c), [c.batch, c.queries, c.keys]),
        &device,
    )
    .cast(dtype);
    let scale = (c.head_dim as f64).powf(-0.5);
    let f = if fused {
        attention
    } else {
        attention_reference
    };
    let out = f(q.clone(), k.clone(), v.clone(), bias, scale, c.softcap);
    assert_eq!(
        out.dtype(),
        DType::from(dtype),
        "the output keeps the inputs' type"
    );
    let grads = (out.clone() * w).sum().backward();
    let grad = |t: &Tensor<4>| floats(t.grad(&grads).expect("a gradient"));
    Run {
        out: floats(out.inner()),
        grads: [grad(&q), grad(&k), grad(&v)],
    }
}

fn check(device: &Device, dtype: FloatDType, tol: f32) {
    for case in &CASES {
        let reference = run(device, case, dtype, FloatDType::F32, false);
        let fused = run(device, case, dtype, dtype, true);
        let out = max_diff(&fused.out, &reference.out);
        assert!(
            out <= tol,
            "{dtype:?} {case:?} on {device:?}: outputs differ by {out}"
        );
        for (name, (a, b)) in ["q", "k", "v"]
            .iter()
            .zip(fused.grads.iter().zip(&reference.grads))
        {
            let diff = max_diff(a, b);
            assert!(
                diff <= tol,
                "{dtype:?} {case:?} on {device:?}: the gradients of {name} differ by {diff}"
            );
        }
    }
}

#[test]
fn memory_efficient_attention_equals_the_reference_on_flex() {
    check(&Device::flex(), FloatDType::F32, 2e-5);
}

#[test]
fn attention_kernels_equal_the_reference_on_wgpu() {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    // Small cubes and tiles (several per case), then the real ones (a case fits in one).
    for small in [true, false] {
        super::kernel::SMALL_TILES.with(|s| s.set(small));
        check(&device, FloatDType::F32, 2e-5);
        if device.supports_dtype(DType::F16) {
            check(&device, FloatDType::F16, 2e-2);
        }
    }
}

#[test]
fn without_autodiff_attention_gives_the_reference() {
    let case = CASES[1];
    for device in [Device::flex(), Device::wgpu(DeviceKind::DefaultDevice)] {
        let q_shape = [case.batch, case.heads, case.queries, case.head_dim];
        let kv_shape = [case.batch, case.kv_heads, case.keys, case.head_dim];
        let t = |seed, shape: [usize; 4]| {
            Tensor::<4>::from_data(
                TensorData::new(values(shape.iter().product(), seed, 1.0), shape),
                &device,
            )
        };
        let (q, k, v) = (t(1, q_shape), t(2, kv_shape), t(3, kv_shape));
        let bias = Tensor::<3>::from_data(
            TensorData::new(bias(&case), [case.batch, case.queries, case.keys]),
            &device,
        );
        let fused = floats(attention(
            q.clone(),
            k.clone(),
            v.clone(),
            bias.clone(),
            0.25,
            0.0,
        ));
        let reference = floats(attention_reference(q, k, v, bias, 0.25, 0.0));
        assert!(max_diff(&fused, &reference) <= 2e-5, "{device:?}");
    }
}
