//! SwiGLU's gate, `silu(gate) * up`, as one operation whose backward keeps only `gate` and `up`.
//!
//! Written as tensor operations (`gate * sigmoid(gate) * up`), autodiff keeps `gate`,
//! `sigmoid(gate)`, `silu(gate)` and `up` for the backward pass: four tensors of the MLP's
//! width per token and layer, the largest activations of a decoder. [`swiglu`] keeps two and
//! recomputes the sigmoid:
//! - wgpu (any CubeCL runtime): one elementwise CubeCL kernel each way ([`kernel`]), in f32;
//! - Flex (the CPU): loops over chunks, spread over the cores ([`flex`]);
//! - the trait's default bodies (tensor operations) elsewhere and for f16 on Flex.

mod autodiff;
mod flex;
mod kernel;

#[cfg(test)]
mod tests;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;

/// The operations of [`swiglu`] on every backend (see the module's documentation).
#[backend_extension(Autodiff, Flex, Cube)]
pub trait SwigluBackend: Backend {
    /// `silu(gate) * up`, elementwise; `gate` and `up` have the same shape.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        forward_ops::<Self>(gate, up)
    }

    /// The gradients of `gate` and `up` given the output's gradient `grad`:
    /// `grad * up * s * (1 + gate * (1 - s))` and `grad * gate * s`, with `s = sigmoid(gate)`.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        backward_ops::<Self>(gate, up, grad)
    }
}

/// [`SwigluBackend::swiglu`] in tensor operations, on any backend.
fn forward_ops<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    B::float_mul(B::float_mul(gate.clone(), B::sigmoid(gate)), up)
}

/// [`SwigluBackend::swiglu_backward`] in tensor operations, on any backend.
fn backward_ops<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = B::sigmoid(gate.clone());
    let d_up = B::float_mul(grad.clone(), B::float_mul(gate.clone(), s.clone()));
    // s * (1 + gate * (1 - s)) = s + gate * s - gate * s^2
    let gs = B::float_mul(gate, s.clone());
    let slope = B::float_add(s.clone(), B::float_sub(gs.clone(), B::float_mul(gs, s)));
    let d_gate = B::float_mul(B::float_mul(grad, up), slope);
    (d_gate, d_up)
}

/// `silu(gate) * up`, with a backward that keeps only `gate` and `up` (see the module's
/// documentation).
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(
        gate.dims(),
        up.dims(),
        "swiglu's gate and up differ in shape"
    );
    Tensor::from_dispatch(<Dispatch as SwigluBackend>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// The tensor-op reference of [`swiglu`], differentiated by autodiff op by op.
pub fn swiglu_reference<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}
