//! The backward pass of a micro-batch: plain, with chunked log-probs, or with per-layer
//! checkpoints; gradients accumulate over the layers and chunks.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use super::Objective;
use super::forward::{check_batch, loss_of};
use super::readback::Packed;
use crate::error::{CoreError, Result};
use crate::infer::score::{Collated, chunked_logps, collate, position_logps};
use crate::load::models::CausalLm;
use crate::train::objective::MicroBatch;
use crate::train::parallel::Share;

/// One micro-batch's share of a step: its loss is scaled by `scale`, and `chunk` positions of
/// log-probs are formed at a time (0: all).
pub(super) struct MicroJob<'a> {
    pub(super) objective: &'a Objective,
    pub(super) batch: &'a MicroBatch,
    pub(super) share: Share,
    pub(super) micro: usize,
    pub(super) scale: f64,
    pub(super) chunk: usize,
}

/// The gradients of a micro-batch's loss: a forward pass under autodiff and [`head_backward`]
/// (with chunked log-probs when `chunk` > 0); or, when `layered`, with per-layer checkpoints
/// (`grad_checkpoint`), which keep the activations of one decoder layer at a time, not those
/// of all of them:
///
/// 1. The forward pass runs on the plain model (no graph) and keeps only each layer's input.
/// 2. The final norm and the loss are differentiated from a leaf copy of the last layer's
///    output: its gradient `dh`.
/// 3. From the last layer down, each layer is recomputed from a leaf copy of its input under
///    autodiff and `sum(layer(x) * dh)` differentiated: its parameters' gradients, and `dh`
///    for the layer below; the layer's graph is then dropped.
/// 4. Last, when the embeddings train, `sum(embed(ids) * dh)`: their gradient.
pub(super) fn micro_gradients(
    model: &CausalLm,
    job: &MicroJob<'_>,
    layered: bool,
    packed: &mut Packed,
) -> Result<GradientsParams> {
    check_batch(job.objective, job.batch)?;
    let device = model.device();
    let collated = collate(&job.batch.rows, &device);
    let mut accumulator = GradientsAccumulator::<CausalLm>::new();
    if !layered {
        let hidden = model.hidden_states(collated.inputs.clone(), None); // [rows, width, hidden]
        let grads = head_backward(model, hidden, &collated, job, packed, &mut accumulator)?;
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        return Ok(accumulator.grads());
    }
    let [_, width] = collated.inputs.dims();
    let mut inputs = model.valid().layer_inputs(collated.inputs.clone().inner());
    let top = inputs
        .pop()
        .expect("the last layer's output")
        .autodiff()
        .require_grad();
    let hidden = model.final_norm(top.clone());
    let mut grads = head_backward(model, hidden, &collated, job, packed, &mut accumulator)?;
    let mut dh = top.grad_remove(&mut grads).ok_or_else(no_gradient)?;
    accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    let pass = model.training_pass(width, &device);
    while let Some(x) = inputs.pop() {
        let layer = inputs.len();
        let x = x.autodiff().require_grad();
        let y = model.layer_forward(layer, x.clone(), &pass);
        let mut grads = (y * dh).sum().backward();
        dh = x.grad_remove(&mut grads).ok_or_else(no_gradient)?;
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    let embedded = model.embed(collated.inputs.clone());
    if embedded.is_tracked() {
        let grads = (embedded * dh).sum().backward();
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    Ok(accumulator.grads())
}

/// The backward pass from a micro-batch's loss into `hidden`, the decoder's output after the
/// final norm (`[rows, width, hidden]`, under autodiff), and through `hidden`'s graph. Returns
/// that pass's gradients (what `hidden`'s graph reaches); the output layer's gradients of the
/// chunks (below) go to `accumulator`.
///
/// With `chunk` 0, the log-probs are formed from `hidden` at once and the loss differentiated.
/// Otherwise they are formed `chunk` positions at a time, so that no `[rows, seq, vocab]`
/// tensor is kept for the backward pass, only `[rows, chunk, vocab]` while a chunk is computed:
/// 1. the per-token log-probs are computed from a detached copy of `hidden`, chunk by chunk,
///    without a graph;
/// 2. the loss is computed from those log-probs made a leaf, and differentiated: `g`, the
///    gradient of the loss for each token's log-prob (`[rows, seq]`, small);
/// 3. chunk by chunk, the log-probs are recomputed from a leaf copy of `hidden` under autodiff
///    and `sum(g * logp)` is differentiated: the gradient for `hidden` (and for the output
///    layer's weights, when they train), after which the chunk's graph is dropped;
/// 4. `sum(hidden * dh)` is differentiated through `hidden`'s graph: the same gradients as the
///    loss's.
fn head_backward(
    model: &CausalLm,
    hidden: Tensor<3>,
    collated: &Collated,
    job: &MicroJob<'_>,
    packed: &mut Packed,
    accumulator: &mut GradientsAccumulator<CausalLm>,
) -> Result<burn::tensor::Gradients> {
    let device = model.device();
    let [rows, width] = collated.inputs.dims();
    let chunk = job.chunk;
    let loss = |policy: Tensor<1>, packed: &mut Packed| -> Result<Tensor<1>> {
        let loss = loss_of(
            policy,
            collated,
            job.objective,
            job.batch,
            job.share,
            job.micro,
            packed,
        )?;
        Ok(if job.scale != 1.0 {
            loss * job.scale
        } else {
            loss
        })
    };
    if chunk == 0 {
        let policy = position_logps(model, hidden, collated, 0, width)
            .sum_dim(1)
            .reshape([rows]);
        return Ok(loss(policy, packed)?.backward());
    }
    let fixed = hidden.clone().detach();
    let logps = chunked_logps(model, &fixed, collated, chunk)
        .detach()
        .require_grad(); // [rows, width]
    let policy = logps.clone().sum_dim(1).reshape([rows]);
    let g = logps
        .grad(&loss(policy, packed)?.backward())
        .unwrap_or_else(|| Tensor::zeros([rows, width], &device.clone().inner()));
    let mut dh = Vec::new();
    for s in (0..width).step_by(chunk) {
        let len = chunk.min(width - s);
        let h = fixed.clone().narrow(1, s, len).detach().require_grad();
        let surrogate = (position_logps(model, h.clone(), collated, s, len)
            * g.clone().narrow(1, s, len))
        .sum();
        let mut grads = surrogate.backward();
        dh.push(h.grad_remove(&mut grads).ok_or_else(no_gradient)?);
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    let dh = Tensor::cat(dh, 1); // [rows, width, hidden], no graph
    Ok((hidden * dh).sum().backward())
}

fn no_gradient() -> CoreError {
    CoreError::Internal("no gradient reached the hidden states".into())
}
