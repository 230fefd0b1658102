//! The CubeCL kernels of [`super::SwigluBackend`]: one unit per element each way, in f32.

use burn::backend::Cube;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::SwigluBackend;

#[cube]
fn sigmoid(x: f32) -> f32 {
    f32::new(1.0) / (f32::new(1.0) + f32::exp(-x))
}

#[cube(launch_unchecked)]
fn forward_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    out: &mut Tensor<F>,
    total: usize,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= total {
        terminate!();
    }
    let g = f32::cast_from(gate[i]);
    out[i] = F::cast_from(g * sigmoid(g) * f32::cast_from(up[i]));
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn backward_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    grad: &Tensor<F>,
    d_gate: &mut Tensor<F>,
    d_up: &mut Tensor<F>,
    total: usize,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= total {
        terminate!();
    }
    let g = f32::cast_from(gate[i]);
    let dy = f32::cast_from(grad[i]);
    let s = sigmoid(g);
    d_up[i] = F::cast_from(dy * g * s);
    d_gate[i] =
        F::cast_from(dy * f32::cast_from(up[i]) * s * (f32::new(1.0) + g * (f32::new(1.0) - s)));
}

impl SwigluBackend for Cube {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gate, up) = (into_contiguous(gate), into_contiguous(up));
        let shape = burn::backend::TensorMetadata::shape(&gate);
        let total = shape.num_elements();
        let out = empty_device_dtype(gate.client.clone(), gate.device.clone(), shape, gate.dtype);
        if total == 0 {
            return out;
        }
        let client = gate.client.clone();
        let cube_dim = CubeDim::new(&client, total);
        let count = calculate_cube_count_elemwise(&client, total, cube_dim);
        let dtype = dtype_to_storage_type(gate.dtype);
        unsafe {
            forward_kernel::launch_unchecked(
                &client,
                count,
                cube_dim,
                gate.into_tensor_arg(),
                up.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                total,
                dtype,
            )
        };
        out
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (gate, up, grad) = (
            into_contiguous(gate),
            into_contiguous(up),
            into_contiguous(grad),
        );
        let shape = burn::backend::TensorMetadata::shape(&gate);
        let total = shape.num_elements();
        let empty = || {
            empty_device_dtype(
                gate.client.clone(),
                gate.device.clone(),
                shape.clone(),
                gate.dtype,
            )
        };
        let (d_gate, d_up) = (empty(), empty());
        if total == 0 {
            return (d_gate, d_up);
        }
        let client = gate.client.clone();
        let cube_dim = CubeDim::new(&client, total);
        let count = calculate_cube_count_elemwise(&client, total, cube_dim);
        let dtype = dtype_to_storage_type(gate.dtype);
        unsafe {
            backward_kernel::launch_unchecked(
                &client,
                count,
                cube_dim,
                gate.into_tensor_arg(),
                up.into_tensor_arg(),
                grad.into_tensor_arg(),
                d_gate.clone().into_tensor_arg(),
                d_up.clone().into_tensor_arg(),
                total,
                dtype,
            )
        };
        (d_gate, d_up)
    }
}
