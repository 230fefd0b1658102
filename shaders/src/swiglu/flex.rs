//! [`super::SwigluBackend`] on Flex (the CPU): one pass each way over chunks of the tensors,
//! spread over the cores (`rayon`; one thread in the browser). f16 takes the tensor-op path.

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use crate::cpu::{dense, each};

use super::SwigluBackend;

/// Elements per task.
const CHUNK: usize = 1 << 14;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn f32_inputs(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

impl SwigluBackend for Flex {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if !f32_inputs(&[&gate, &up]) {
            return super::forward_ops::<Self>(gate, up);
        }
        let gate = dense(gate);
        // The output is written over `up` when nothing else holds it, else over a copy.
        let mut out = dense(up);
        let g = gate.as_slice::<f32>().expect("contiguous f32");
        let o = out.storage_mut::<f32>();
        each(
            o.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).collect(),
            |(o, g)| {
                for (o, g) in o.iter_mut().zip(g) {
                    *o *= g * sigmoid(*g);
                }
            },
        );
        out
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !f32_inputs(&[&gate, &up, &grad]) {
            return super::backward_ops::<Self>(gate, up, grad);
        }
        let (gate, up) = (dense(gate), dense(up));
        let grad = dense(grad);
        let mut d_gate = FlexTensor::empty(gate.layout().shape().clone(), DType::F32);
        let mut d_up = FlexTensor::empty(gate.layout().shape().clone(), DType::F32);
        let (g, u, dy) = (
            gate.as_slice::<f32>().expect("contiguous f32"),
            up.as_slice::<f32>().expect("contiguous f32"),
            grad.as_slice::<f32>().expect("contiguous f32"),
        );
        let (dg, du) = (d_gate.storage_mut::<f32>(), d_up.storage_mut::<f32>());
        let work: Vec<_> = dg
            .chunks_mut(CHUNK)
            .zip(du.chunks_mut(CHUNK))
            .zip(g.chunks(CHUNK).zip(u.chunks(CHUNK)).zip(dy.chunks(CHUNK)))
            .collect();
        each(work, |((dg, du), ((g, u), dy))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                du[i] = dy[i] * g[i] * s;
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
        (d_gate, d_up)
    }
}
