//! [`super::AttentionBackend::attention_output`] under autodiff: one graph node whose backward
//! recomputes the scores block by block (or row by row in the kernels).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::AttentionBackend;

#[derive(Debug)]
struct AttentionBackward;

/// What the backward needs: `q`, `k`, `v`, the bias, the output, the log-sum-exp, the scale and
/// the soft cap. Never the scores.
type Saved<B> = ([FloatTensor<B>; 6], f32, f32);

impl<B: AttentionBackend> Backward<B, 3> for AttentionBackward {
    type State = Saved<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let ([q, k, v, bias, out, lse], scale, softcap) = ops.state;
        let (dq, dk, dv) = B::attention_backward(q, k, v, bias, out, lse, grad, scale, softcap);
        let [pq, pk, pv] = ops.parents;
        for (parent, g) in [(pq, dq), (pk, dk), (pv, dv)] {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, g);
            }
        }
    }
}

impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn attention_output(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f32,
        softcap: f32,
    ) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v, bias) = (
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                    bias.into_primitive(),
                );
                let (out, lse) = B::attention_forward(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    bias.clone(),
                    scale,
                    softcap,
                );
                prep.finish(([q, k, v, bias, out.clone(), lse], scale, softcap), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_output(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                bias.into_primitive(),
                scale,
                softcap,
            )),
        }
    }
}
