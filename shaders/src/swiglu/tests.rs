//! [`super::swiglu`] against the tensor-op reference: outputs and the gradients of `gate` and
//! `up`, on Flex and on wgpu, in f32 (and f16 where the device has it).

use burn::tensor::{DType, Device, DeviceKind, FloatDType, Tensor, TensorData};

use super::{swiglu, swiglu_reference};
use crate::test_util::{floats, max_diff};

/// Values in `[-scale, scale]`, with a few large ones (the sigmoid's tails).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(3);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = (((state >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0) * scale;
            if i % 53 == 7 { x * 6.0 } else { x }
        })
        .collect()
}

/// Outputs, then the gradients of gate and up, of `sum(f(gate, up) * w)`.
fn run(device: &Device, dtype: FloatDType, fused: bool) -> [Vec<f32>; 3] {
    let device = device.clone().autodiff();
    // 3 x 5 x 4099 elements: more than one of Flex's chunks, not a multiple of anything.
    let shape = [3, 5, 4099];
    let n = shape.iter().product();
    let t = |seed, scale| {
        Tensor::<3>::from_data(TensorData::new(values(n, seed, scale), shape), &device).cast(dtype)
    };
    let (gate, up) = (t(1, 4.0).require_grad(), t(2, 2.0).require_grad());
    let w = t(3, 1.0);
    // An intermediate `up` (as in the model, where it comes out of a projection).
    let up2 = up.clone() * 1.0;
    let out = if fused {
        swiglu(gate.clone(), up2)
    } else {
        swiglu_reference(gate.clone(), up2)
    };
    assert_eq!(out.dtype(), DType::from(dtype));
    let grads = (out.clone() * w).sum().backward();
    [
        floats(out.inner()),
        floats(gate.grad(&grads).expect("gate's gradient")),
        floats(up.grad(&grads).expect("up's gradient")),
    ]
}

fn check(device: &Device, dtype: FloatDType, tol: f32) {
    let (fused, reference) = (run(device, dtype, true), run(device, dtype, false));
    for (name, (a, b)) in ["output", "gate's gradient", "up's gradient"]
        .iter()
        .zip(fused.iter().zip(&reference))
    {
        // Relative to the largest value: the outputs reach a few hundred.
        let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let diff = max_diff(a, b) / scale;
        assert!(
            diff <= tol,
            "{dtype:?} on {device:?}: {name} differs by {diff} of its largest value"
        );
    }
}

#[test]
fn swiglu_equals_the_reference_on_flex() {
    check(&Device::flex(), FloatDType::F32, 1e-6);
}

#[test]
fn swiglu_kernels_equal_the_reference_on_wgpu() {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    check(&device, FloatDType::F32, 1e-6);
    if device.supports_dtype(DType::F16) {
        check(&device, FloatDType::F16, 1e-2);
    }
}
