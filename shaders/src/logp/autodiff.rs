//! [`super::LogpBackend::token_logps`] under autodiff: one graph node with a fused backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::{FloatTensor, IntTensor};

use super::LogpBackend;

#[derive(Debug)]
struct TokenLogpsBackward;

impl<B: LogpBackend> Backward<B, 1> for TokenLogpsBackward {
    /// The logits' node (its output is kept by the checkpointer), the labels and the rows'
    /// log-sum-exp (`[rows]`).
    type State = (NodeId, IntTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (logits, labels, lse) = ops.state;
        let logits: FloatTensor<B> = checkpointer.retrieve_node_output(logits);
        if let Some(parent) = parent {
            grads.register::<B>(
                parent.id,
                B::token_logps_backward(logits, labels, lse, grad),
            );
        }
    }
}

impl<B: LogpBackend, C: CheckpointStrategy> LogpBackend for Autodiff<B, C> {
    fn token_logps(logits: FloatTensor<Self>, labels: IntTensor<Self>) -> FloatTensor<Self> {
        match TokenLogpsBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let node = prep.checkpoint(&logits);
                let lse = B::row_logsumexp(logits.primitive().clone());
                let rows = lse_rows(&lse);
                let picked = B::float_gather(
                    1,
                    logits.into_primitive(),
                    B::int_reshape(labels.clone(), burn::tensor::Shape::new([rows, 1])),
                );
                let output = B::float_sub(
                    B::float_reshape(picked, burn::tensor::Shape::new([rows])),
                    lse.clone(),
                );
                prep.finish((node, labels, lse), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::token_logps(logits.into_primitive(), labels))
            }
        }
    }
}

fn lse_rows<T: burn::backend::TensorMetadata>(lse: &T) -> usize {
    lse.shape()[0]
}
