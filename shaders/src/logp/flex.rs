//! [`super::LogpBackend`] on Flex (the CPU): each row in one pass over the logits (one more for
//! its maximum, from cache), the gradient written in place, rows spread over the cores (`rayon`;
//! one thread in the browser). The tensor-op path made four full `[rows, vocab]` passes for the
//! log-sum-exp and five for the gradient, with a fresh buffer for most, on one thread. Types
//! other than f32 take the tensor-op path.

use burn::backend::Flex;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;

use crate::cpu::{dense, each};

use super::{LogpBackend, dims2, row_logsumexp_ops, token_logps_backward_ops};

/// `[rows]` values of a small tensor, as f32.
fn values(tensor: FlexTensor) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

/// `logsumexp(row)`: the maximum, then the sum of `exp(x - max)`.
fn row_lse(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
    if !max.is_finite() {
        return max;
    }
    max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln()
}

/// `row = g * (onehot(label) - exp(row - lse))`, in place.
fn row_backward(row: &mut [f32], label: usize, lse: f32, g: f32) {
    for x in row.iter_mut() {
        *x = -g * (*x - lse).exp();
    }
    row[label] += g;
}

impl LogpBackend for Flex {
    fn row_logsumexp(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        let [rows, vocab] = dims2(&logits);
        if logits.dtype() != DType::F32 || vocab == 0 {
            return row_logsumexp_ops::<Self>(logits);
        }
        let logits = dense(logits);
        let data = logits.as_slice::<f32>().expect("contiguous f32 logits");
        let mut out = vec![0.0f32; rows];
        each(
            out.iter_mut().zip(data.chunks(vocab)).collect(),
            |(o, row)| *o = row_lse(row),
        );
        FlexTensor::from_data(TensorData::new(out, [rows]))
    }

    fn token_logps_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [_, vocab] = dims2(&logits);
        if logits.dtype() != DType::F32 || vocab == 0 {
            return token_logps_backward_ops::<Self>(logits, labels, lse, grad);
        }
        let labels: Vec<i64> = labels
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("integer labels");
        let (lse, grad) = (values(lse), values(grad));
        // Written over the logits when nothing else holds them (training); else over a copy.
        let mut logits = dense(logits);
        let data = logits.storage_mut::<f32>();
        let work: Vec<_> = data
            .chunks_mut(vocab)
            .zip(labels.iter().zip(lse.iter().zip(&grad)))
            .collect();
        each(work, |(row, (&label, (&l, &g)))| {
            row_backward(row, label as usize, l, g)
        });
        logits
    }
}
