//! Data parallelism within a step: which shards of each micro-batch this process computes on
//! which of its devices, and the sum of gradients and logged numbers across processes.

use burn::optim::GradientsParams;
use burn::prelude::*;

use super::readback::{Logged, offsets, read};
use super::{Objective, Pending};
use crate::error::{CoreError, Result};
use crate::load::models::CausalLm;
use crate::train::objective::MicroBatch;
use crate::train::optim::squared_grad_norm;
use crate::train::parallel::{Collective, Shard, Share, all_reduce_grads, split_micro_batch};

/// A shard this process computes: (local device, micro-batch, slot in the global layout, shard).
pub(super) type LocalShard = (usize, usize, usize, Shard);

/// The shards of `batch` that rank `rank` of `ranks` computes on its `local` devices, as
/// (local device, shard): the micro-batch is split by whole examples across ranks, then each
/// rank's part across its devices; every shard's share is of the whole micro-batch.
fn shards_of(
    objective: &Objective,
    batch: &MicroBatch,
    ranks: usize,
    rank: usize,
    local: usize,
) -> Vec<(usize, Shard)> {
    let Some((_, part)) = split_micro_batch(objective, batch, ranks)
        .into_iter()
        .find(|(r, _)| *r == rank)
    else {
        return Vec::new();
    };
    split_micro_batch(objective, &part.batch, local)
        .into_iter()
        .map(|(d, s)| {
            let share = if part.share == Share::WHOLE {
                s.share
            } else {
                Share {
                    examples: part.share.examples * s.share.examples,
                    tokens: part.share.tokens * s.share.tokens,
                }
            };
            (
                d,
                Shard {
                    batch: s.batch,
                    share,
                },
            )
        })
        .collect()
}

/// The shards of every micro-batch that rank `rank` of `ranks` computes on its `local` devices,
/// as [`LocalShard`]s, and, across processes (`ranks` > 1), what every shard of every process
/// logs, in rank order.
pub(super) fn plan(
    objective: &Objective,
    batches: &[MicroBatch],
    (rank, ranks): (usize, usize),
    local: usize,
) -> (Vec<LocalShard>, Option<Vec<Logged>>) {
    let mut mine = Vec::new();
    let mut global = Vec::new();
    for (m, batch) in batches.iter().enumerate() {
        for r in 0..ranks {
            for (d, shard) in shards_of(objective, batch, ranks, r, local) {
                if ranks > 1 {
                    global.push(Logged::of(objective, m, &shard.batch));
                }
                if r == rank {
                    mine.push((d, m, global.len().saturating_sub(1), shard));
                }
            }
        }
    }
    (mine, (ranks > 1).then_some(global))
}

/// Across processes: sums the gradients and the logged numbers (`local`, this process's
/// shards' in order) of every rank, each rank filling the slots of its own shards, then appends
/// the global squared gradient norm. The result is laid out by the global layout, which
/// replaces the pending step's.
pub(super) fn reduce_across(
    collective: &dyn Collective,
    model: &CausalLm,
    mut pending: Pending,
    local: Vec<f32>,
) -> Result<(Pending, Vec<f32>)> {
    let global = pending.global.take().unwrap_or_default();
    let (starts, width) = offsets(&global);
    let expected: usize = pending.slots.iter().map(|&slot| global[slot].width()).sum();
    if local.len() != expected {
        return Err(CoreError::Internal(format!(
            "this process read back {} numbers where its shards log {expected}",
            local.len()
        )));
    }
    let mut values = vec![0f32; width];
    let mut taken = 0;
    for &slot in &pending.slots {
        let w = global[slot].width();
        values[starts[slot]..starts[slot] + w].copy_from_slice(&local[taken..taken + w]);
        taken += w;
    }
    collective.all_reduce_sum(&mut values)?;
    let mut tokens = [pending.tokens as f32];
    collective.all_reduce_sum(&mut tokens)?;
    pending.tokens = tokens[0].round() as usize;
    let grads = std::mem::replace(&mut pending.grads, GradientsParams::new());
    pending.grads = all_reduce_grads(model, grads, collective)?;
    let norm = squared_grad_norm(model, &pending.grads)
        .unwrap_or_else(|| Tensor::<1>::zeros([1], &model.device()));
    values.extend(read(norm.into_data())?);
    pending.packed.layout = global;
    Ok((pending, values))
}
