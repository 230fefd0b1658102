//! What the kernels' tests share.

use burn::tensor::{FloatDType, Tensor};

/// A tensor's values as f32.
pub fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// The largest absolute difference of two equally long slices; a non-finite value in `a` fails.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(x.is_finite(), "a non-finite value: {x}");
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}
