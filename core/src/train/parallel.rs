//! Data parallelism over several devices: one replica of the model per device, every micro-batch
//! split across them by whole examples (a CLO quadruple or a DPO pair never straddles two
//! devices), each shard's loss weighted by its share of the micro-batch so that the replicas'
//! gradients *sum* to the gradient of the whole micro-batch on one device.
//!
//! Burn 0.22 has no collective for wgpu (its `all_reduce` panics there), so gradients move to the
//! main device with `GradientsParams::to_device` and are added there; one AdamW update follows on
//! the main model, and the replicas take its trainable weights before the next step (frozen
//! weights are copied once). Across processes (MPI), [`Collective`] sums the host copies.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::objective::{MicroBatch, Objective};
use crate::error::Result;
use crate::load::models::CausalLm;
use crate::train::loss::NllReduction;

/// A sum across processes (MPI ranks). Every rank calls [`Collective::all_reduce_sum`] with a
/// buffer of the same length, in the same order; afterwards every rank holds the element-wise sum.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn size(&self) -> usize;
    /// Element-wise sum over all processes, in place.
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()>;
}

/// The part of a loss a shard contributes: its share of the micro-batch's examples (for means
/// over examples and pairs) and of the response tokens a token-mean NLL divides by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub examples: f64,
    pub tokens: f64,
}

impl Share {
    /// A whole micro-batch.
    pub const WHOLE: Share = Share {
        examples: 1.0,
        tokens: 1.0,
    };
}

/// One device's part of a micro-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub batch: MicroBatch,
    pub share: Share,
}

/// The example ranges `parts` near-equal contiguous parts of `n` examples (earlier parts take
/// the remainder; parts may be empty when `n < parts`).
pub fn split_ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let len = base + usize::from(p < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// The response tokens a token-mean NLL of `objective` divides by, for the examples `range` of
/// a micro-batch of `n` examples.
fn nll_tokens(
    objective: &Objective,
    batch: &MicroBatch,
    n: usize,
    range: &std::ops::Range<usize>,
) -> usize {
    let rows = |block: usize| {
        batch.rows[block * n + range.start..block * n + range.end]
            .iter()
            .map(|r| r.response.len())
            .sum::<usize>()
    };
    match objective {
        // The NLL is of the target-chosen block (2).
        Objective::Clo { .. } => rows(2),
        Objective::Sft { .. } => rows(0),
        Objective::Dpo { .. } => 0,
    }
}

/// The examples `range` of `batch` (in the objective's block layout) as a micro-batch.
pub fn sub_batch(
    objective: &Objective,
    batch: &MicroBatch,
    range: std::ops::Range<usize>,
) -> MicroBatch {
    let width = objective.rows_per_example();
    let n = batch.rows.len() / width;
    let pick = |k: usize| k * n + range.start..k * n + range.end;
    let mut out = MicroBatch::default();
    for k in 0..width {
        out.rows.extend_from_slice(&batch.rows[pick(k)]);
        if !batch.reference.is_empty() {
            out.reference.extend_from_slice(&batch.reference[pick(k)]);
        }
    }
    if !batch.english.is_empty() {
        out.english = batch.english[range].to_vec();
    }
    out
}

/// Splits a micro-batch into `parts` shards of whole examples (empty parts are left out), each
/// with its share of the loss: the shards' weighted losses sum to the micro-batch's loss.
pub fn split_micro_batch(
    objective: &Objective,
    batch: &MicroBatch,
    parts: usize,
) -> Vec<(usize, Shard)> {
    let width = objective.rows_per_example();
    let n = batch.rows.len() / width.max(1);
    if parts <= 1 || n <= 1 {
        return vec![(
            0,
            Shard {
                batch: batch.clone(),
                share: Share::WHOLE,
            },
        )];
    }
    let all = 0..n;
    let total_tokens = nll_tokens(objective, batch, n, &all).max(1) as f64;
    let token_mean = matches!(
        objective,
        Objective::Clo {
            reduction: NllReduction::TokenMean,
            ..
        } | Objective::Sft {
            reduction: NllReduction::TokenMean
        }
    );
    split_ranges(n, parts)
        .into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(p, r)| {
            let examples = r.len() as f64 / n as f64;
            let tokens = if token_mean {
                nll_tokens(objective, batch, n, &r) as f64 / total_tokens
            } else {
                examples
            };
            (
                p,
                Shard {
                    batch: sub_batch(objective, batch, r),
                    share: Share { examples, tokens },
                },
            )
        })
        .collect()
}

/// Collects the trainable (gradient-requiring) float parameters of a module.
struct Trainables {
    found: GradientsParams,
}

impl ModuleVisitor for Trainables {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if value.is_require_grad() {
            self.found.register(param.id, value.detach());
        }
    }
}

/// Replaces a replica's trainable parameters by the main model's, moved to the replica's device.
struct TakeTrainables<'a> {
    from: &'a mut GradientsParams,
    device: Device,
}

impl ModuleMapper for TakeTrainables<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.from.remove::<D>(param.id) {
            Some(value) => {
                let device = self.device.clone();
                param.map(move |_| value.to_device(&device).detach().require_grad())
            }
            None => param,
        }
    }
}

/// The trainable parameter ids of a module, with their element counts, in visiting order.
struct TrainableIds {
    ids: Vec<(ParamId, usize)>,
}

impl ModuleVisitor for TrainableIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if value.is_require_grad() {
            self.ids.push((param.id, value.shape().num_elements()));
        }
    }
}

/// Model replicas on the devices after the main one, kept equal to the main model.
pub struct Replicas {
    /// Autodiff devices of the replicas.
    devices: Vec<Device>,
    models: Vec<Option<CausalLm>>,
}

impl Replicas {
    /// Replicas on `devices` (plain or autodiff devices; training uses their autodiff twins).
    pub fn new(devices: &[Device]) -> Self {
        Self {
            devices: devices.iter().map(|d| d.clone().autodiff()).collect(),
            models: devices.iter().map(|_| None).collect(),
        }
    }

    /// The number of replicas besides the main model.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The replicas, equal to `main`: the first call copies the whole model to each device,
    /// later calls only its trainable parameters.
    pub fn synced(&mut self, main: &CausalLm) -> Vec<CausalLm> {
        let mut out = Vec::with_capacity(self.devices.len());
        for (device, slot) in self.devices.iter().zip(self.models.iter_mut()) {
            let replica = match slot.take() {
                None => main.clone().fork(device),
                Some(replica) => {
                    let mut collect = Trainables {
                        found: GradientsParams::new(),
                    };
                    main.visit(&mut collect);
                    replica.map(&mut TakeTrainables {
                        from: &mut collect.found,
                        device: device.clone(),
                    })
                }
            };
            out.push(replica.clone());
            *slot = Some(replica);
        }
        out
    }
}

/// Sums gradients over processes: every trainable parameter's gradient (zeros where this rank
/// has none) is read back, summed by `collective`, and put back on `device`.
pub fn all_reduce_grads(
    model: &CausalLm,
    grads: GradientsParams,
    collective: &dyn Collective,
) -> Result<GradientsParams> {
    let mut ids = TrainableIds { ids: Vec::new() };
    model.visit(&mut ids);
    let mut sums = AllReduce {
        grads,
        buffer: Vec::new(),
        shapes: HashMap::new(),
    };
    model.visit(&mut ReadGrads { state: &mut sums });
    collective.all_reduce_sum(&mut sums.buffer)?;
    let device = model.device();
    let mut out = GradientsParams::new();
    let mut at = 0;
    for (id, len) in ids.ids {
        let shape = sums.shapes.remove(&id).unwrap_or_else(|| vec![len]);
        let values = sums.buffer[at..at + len].to_vec();
        at += len;
        out_register(&mut out, id, values, shape, &device);
    }
    Ok(out)
}

/// Registers a host gradient of any rank (1 to 4) under `id`.
fn out_register(
    out: &mut GradientsParams,
    id: ParamId,
    values: Vec<f32>,
    shape: Vec<usize>,
    device: &Device,
) {
    let data = TensorData::new(values, shape.clone());
    match shape.len() {
        1 => out.register(id, Tensor::<1>::from_data(data, device)),
        2 => out.register(id, Tensor::<2>::from_data(data, device)),
        3 => out.register(id, Tensor::<3>::from_data(data, device)),
        _ => out.register(id, Tensor::<4>::from_data(data, device)),
    }
}

struct AllReduce {
    grads: GradientsParams,
    buffer: Vec<f32>,
    shapes: HashMap<ParamId, Vec<usize>>,
}

struct ReadGrads<'a> {
    state: &'a mut AllReduce,
}

impl ModuleVisitor for ReadGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let shape = value.dims().to_vec();
        let len = value.shape().num_elements();
        match self.state.grads.remove::<D>(param.id) {
            Some(grad) => {
                let host: Vec<f32> = grad
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_else(|_| vec![0.0; len]);
                self.state.buffer.extend_from_slice(&host);
            }
            None => self.state.buffer.extend(std::iter::repeat_n(0.0, len)),
        }
        self.state.shapes.insert(param.id, shape);
    }
}

/// Runs `f` on every `(replica index, item)`, one thread per item on native targets (each
/// replica's device works at once), in order on wasm32. Results come back in input order.
pub fn run_on_replicas<T, R, F>(items: Vec<(usize, T)>, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, T) -> R + Sync,
{
    if items.len() <= 1 || cfg!(target_arch = "wasm32") {
        return items.into_iter().map(|(i, t)| f(i, t)).collect();
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::thread::scope(|scope| {
            let f = &f;
            let handles: Vec<_> = items
                .into_iter()
                .map(|(i, t)| scope.spawn(move || f(i, t)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
    #[cfg(target_arch = "wasm32")]
    unreachable!()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::score::Pair;

    fn pair(seed: u32, len: usize) -> Pair {
        Pair {
            prompt: vec![seed],
            response: (0..len as u32).collect(),
        }
    }

    #[test]
    fn ranges_cover_every_example_once() {
        assert_eq!(split_ranges(5, 2), vec![0..3, 3..5]);
        assert_eq!(split_ranges(2, 3), vec![0..1, 1..2, 2..2]);
        assert_eq!(split_ranges(4, 1), vec![0..4]);
    }

    /// Shards keep the block layout of whole quadruples; their shares add up to one.
    #[test]
    fn clo_shards_hold_whole_quadruples() {
        let objective = Objective::Clo {
            beta: 0.1,
            lambda: 0.5,
            reduction: NllReduction::TokenMean,
            dpop: 0.0,
        };
        // 3 quadruples: row k*3 + i is block k of quadruple i; response length tells them apart.
        let rows: Vec<Pair> = (0..12).map(|r| pair(r, 1 + r as usize)).collect();
        let batch = MicroBatch {
            rows: rows.clone(),
            reference: (0..12).map(|r| r as f32).collect(),
            english: Vec::new(),
        };
        let shards = split_micro_batch(&objective, &batch, 2);
        assert_eq!(shards.len(), 2);
        let (a, b) = (&shards[0].1, &shards[1].1);
        // Quadruples 0, 1 and quadruple 2.
        assert_eq!(a.batch.reference, vec![0., 1., 3., 4., 6., 7., 9., 10.]);
        assert_eq!(b.batch.reference, vec![2., 5., 8., 11.]);
        assert_eq!(a.batch.rows[4], rows[6]);
        assert!((a.share.examples - 2.0 / 3.0).abs() < 1e-12);
        // Target-chosen responses (block 2: rows 6, 7, 8) have 7, 8 and 9 tokens.
        assert!((a.share.tokens - 15.0 / 24.0).abs() < 1e-12);
        assert!((a.share.tokens + b.share.tokens - 1.0).abs() < 1e-12);
        // More devices than quadruples: empty shards are left out.
        assert_eq!(split_micro_batch(&objective, &batch, 5).len(), 3);
    }

    #[test]
    fn dpo_shards_keep_their_directions() {
        let objective = Objective::Dpo {
            beta: 0.1,
            dpop: 0.0,
        };
        let batch = MicroBatch {
            rows: (0..4).map(|r| pair(r, 2)).collect(),
            reference: vec![0., 1., 2., 3.],
            english: vec![true, false],
        };
        let shards = split_micro_batch(&objective, &batch, 2);
        assert_eq!(shards[1].1.batch.english, vec![false]);
        assert_eq!(shards[1].1.batch.reference, vec![1., 3.]);
        assert_eq!(shards[1].1.share.tokens, 0.5);
    }
}
