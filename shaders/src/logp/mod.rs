//! Per-token log-probabilities of labels under `[rows, vocab]` logits:
//! `log softmax(logits)[row, label[row]] = logits[row, label] - logsumexp(logits[row])`.
//!
//! [`token_logps`] runs, per backend:
//! - wgpu (any CubeCL runtime): two CubeCL kernels in [`kernel`], one cube per row for the
//!   log-sum-exp (online max and sum in f32, then a tree reduction in shared memory), and one
//!   elementwise pass for the gradient;
//! - Flex (the CPU): the same two steps as loops over rows in [`flex`], spread over the cores
//!   (f16 takes the trait's default bodies, in tensor operations);
//! - under autodiff: one graph node whose backward is `g * (onehot(label) - exp(logits - lse))`,
//!   computed from the logits and the saved `[rows]` log-sum-exp. The plain tensor-op chain
//!   ([`token_logps_reference`]) keeps the exponentials (`[rows, vocab]`) for its backward and
//!   forms three more full-size tensors while differentiating.

mod autodiff;
mod flex;
mod kernel;

#[cfg(test)]
mod tests;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{IndexingUpdateOp, Int, Shape, Tensor};

/// The custom operations of this module, on every backend. The default bodies are tensor
/// operations; the CubeCL backend and Flex override the two reductions (kernels; row loops) and
/// `Autodiff` overrides [`LogpBackend::token_logps`] with its fused backward.
#[backend_extension(Autodiff, Flex, Cube)]
pub trait LogpBackend: Backend {
    /// `logsumexp` of each row of `[rows, vocab]` logits: `[rows]`.
    fn row_logsumexp(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        row_logsumexp_ops::<Self>(logits)
    }

    /// The gradient of `token_logps` with respect to `[rows, vocab]` logits, given the labels
    /// (`[rows]`), the rows' log-sum-exp (`[rows]`) and the incoming gradient (`[rows]`):
    /// `grad[row] * (onehot(label[row]) - exp(logits[row] - lse[row]))`.
    fn token_logps_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        token_logps_backward_ops::<Self>(logits, labels, lse, grad)
    }

    /// `log softmax(logits)[row, label[row]]` of `[rows, vocab]` logits and `[rows]` labels:
    /// `[rows]`.
    fn token_logps(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self> {
        let [rows, _] = dims2(&logits);
        let lse = Self::row_logsumexp(logits.clone());
        let picked =
            Self::float_gather(1, logits, Self::int_reshape(labels, Shape::new([rows, 1])));
        Self::float_sub(Self::float_reshape(picked, Shape::new([rows])), lse)
    }
}

/// [`LogpBackend::row_logsumexp`] in tensor operations: max-shifted, on any backend.
fn row_logsumexp_ops<B: Backend>(logits: FloatTensor<B>) -> FloatTensor<B> {
    let [rows, _] = dims2(&logits);
    let max = B::float_max_dim(logits.clone(), 1); // [rows, 1]
    let shifted = B::float_sub(logits, max.clone());
    let sum = B::float_sum_dim(B::float_exp(shifted), 1);
    let lse = B::float_add(B::float_log(sum), max);
    B::float_reshape(lse, Shape::new([rows]))
}

/// [`LogpBackend::token_logps_backward`] in tensor operations, on any backend.
fn token_logps_backward_ops<B: Backend>(
    logits: FloatTensor<B>,
    labels: IntTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let [rows, _] = dims2(&logits);
    let column = Shape::new([rows, 1]);
    let probs = B::float_exp(B::float_sub(logits, B::float_reshape(lse, column.clone())));
    let grad = B::float_reshape(grad, column.clone());
    let spread = B::float_neg(B::float_mul(probs, grad.clone()));
    let labels = B::int_reshape(labels, column);
    B::float_scatter(1, spread, labels, grad, IndexingUpdateOp::Add)
}

fn dims2<T: TensorMetadata>(tensor: &T) -> [usize; 2] {
    let shape = tensor.shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "token log-probs take [rows, vocab] logits"
    );
    [shape[0], shape[1]]
}

/// `log softmax(logits)[row, labels[row]]` for `[rows, vocab]` logits and `[rows]` labels, with
/// the fused backward under autodiff (see the module's documentation).
pub fn token_logps(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as LogpBackend>::token_logps(
        logits.into_dispatch(),
        labels.into_dispatch(),
    ))
}

/// The plain tensor-op reference of [`token_logps`]: the label's logit minus the row's
/// log-sum-exp (max-shifted), differentiated by autodiff op by op.
pub fn token_logps_reference(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [rows, _] = logits.dims();
    let picked = logits.clone().gather(1, labels.reshape([rows, 1])); // [rows, 1]
    let max = logits.clone().detach().max_dim(1); // [rows, 1]
    let lse = (logits - max.clone()).exp().sum_dim(1).log() + max;
    (picked - lse).reshape([rows])
}
