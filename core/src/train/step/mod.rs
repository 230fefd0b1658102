//! One optimizer step, apart from any run directory: forward, loss, backward (with gradient
//! accumulation over micro-batches), global-norm clipping and the AdamW update.
//!
//! A step touches no file and reads back from the device once: every number it reports (the
//! loss and its parts, the preference rewards, the gradient norm) is packed into one tensor and
//! read in one transfer, by [`Trainer::step`] (blocking) or [`Trainer::step_async`] (for wasm,
//! where a blocking GPU read panics). Validation ([`Trainer::evaluate`]) likewise reads once.
//!
//! Every objective clo trains runs through here: CLO, DPO, SFT and pretraining (next-token
//! prediction is SFT on `(first token, rest)` rows), each with its optimizer settings
//! ([`OptimizerSettings`]).

use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::loss::{NllReduction, PreferenceTerms, clo_positive_loss, dpo_positive_loss, nll};
// What a step optimizes and the micro-batch it takes, in their own file (parallel.rs uses them
// too); re-exported so that `train::step::{MicroBatch, Objective}` stay their paths.
pub use super::objective::{MicroBatch, Objective};
use super::optim::{clip_to, squared_grad_norm};
use std::sync::Arc;

use super::parallel::{
    Collective, Replicas, Shard, Share, all_reduce_grads, run_on_replicas, split_micro_batch,
};
use crate::error::{CoreError, Result};
use crate::infer::score::{batch_logps, collate};
use crate::load::models::CausalLm;

/// AdamW and clipping settings, explicit per objective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSettings {
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clipping (PyTorch's `clip_grad_norm_`); 0 disables it.
    pub max_grad_norm: f64,
}

impl OptimizerSettings {
    /// Fine-tuning (`clo train`): transformers' AdamW defaults (0.9, 0.999, 1e-8).
    pub fn fine_tuning(weight_decay: f64, max_grad_norm: f64) -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay,
            max_grad_norm,
        }
    }

    /// Pretraining from scratch (`clo pretrain`): beta_2 = 0.95, as GPT-style pretraining.
    pub fn pretraining(weight_decay: f64, max_grad_norm: f64) -> Self {
        Self {
            beta_2: 0.95,
            ..Self::fine_tuning(weight_decay, max_grad_norm)
        }
    }

    fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta_1 as f32)
            .with_beta_2(self.beta_2 as f32)
            .with_epsilon(self.epsilon as f32)
            .with_weight_decay(self.weight_decay as f32)
            .init()
    }
}

/// A preference pair's rewards as logged: (English direction, chosen reward, rejected reward).
pub type PairRewards = (bool, f64, f64);

/// What a step reports, read back in one transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Mean loss of the micro-batches (before the update).
    pub loss: f64,
    pub loss_sft: Option<f64>,
    pub loss_cl: Option<f64>,
    /// Every preference pair of the step.
    pub pairs: Vec<PairRewards>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Prompt and response tokens of the step's rows.
    pub tokens: usize,
    /// Whether the update was applied: a non-finite loss or gradient norm leaves the weights
    /// and the optimizer as they were.
    pub applied: bool,
}

impl StepReport {
    /// Per-direction (chosen reward, rejected reward, margin, accuracy) means of the pairs.
    pub fn direction(&self, english: bool) -> [Option<f64>; 4] {
        let sel: Vec<(f64, f64)> = self
            .pairs
            .iter()
            .filter(|p| p.0 == english)
            .map(|p| (p.1, p.2))
            .collect();
        if sel.is_empty() {
            return [None; 4];
        }
        let n = sel.len() as f64;
        let chosen = sel.iter().map(|p| p.0).sum::<f64>() / n;
        let rejected = sel.iter().map(|p| p.1).sum::<f64>() / n;
        let acc = sel.iter().filter(|p| p.0 > p.1).count() as f64 / n;
        [
            Some(chosen),
            Some(rejected),
            Some(chosen - rejected),
            Some(acc),
        ]
    }

    /// What went non-finite, if anything.
    pub fn non_finite(&self) -> Option<&'static str> {
        if !self.loss.is_finite() {
            Some("loss")
        } else if !self.grad_norm.is_finite() {
            Some("gradient norm")
        } else {
            None
        }
    }
}

/// Where each micro-batch's numbers lie in the packed read-back tensor.
struct Packed {
    /// Per shard: (its micro-batch, pairs per direction block, english flags for DPO).
    layout: Vec<(usize, usize, Vec<bool>)>,
    values: Vec<Tensor<1>>,
}

impl Packed {
    fn push(&mut self, t: Tensor<1>) {
        self.values.push(t.detach());
    }

    fn push_rewards(&mut self, terms: &PreferenceTerms) {
        self.push(terms.chosen_rewards.clone());
        self.push(terms.rejected_rewards.clone());
    }
}

/// The loss of a micro-batch as validation computes it (training goes through
/// [`micro_gradients`]), with what is logged of it pushed to `packed`.
///
/// `share` is the batch's part of a larger micro-batch split across devices (data parallelism):
/// the loss and its logged parts are that share of the whole micro-batch's, so that the shards'
/// losses (and gradients) sum to the whole's. `micro` tags what is logged with the micro-batch.
fn micro_loss(
    model: &CausalLm,
    objective: &Objective,
    batch: &MicroBatch,
    share: Share,
    micro: usize,
    packed: &mut Packed,
) -> Result<Tensor<1>> {
    let device = model.device();
    check_batch(objective, batch)?;
    let collated = collate(&batch.rows, &device);
    let (policy, _) = batch_logps(model, &collated);
    loss_of(policy, &collated, objective, batch, share, micro, packed)
}

/// Refuses a micro-batch that does not hold whole examples of the objective, or whose reference
/// log-probs do not match its rows.
fn check_batch(objective: &Objective, batch: &MicroBatch) -> Result<()> {
    let rows = batch.rows.len();
    let width = objective.rows_per_example();
    if rows == 0 || !rows.is_multiple_of(width) {
        return Err(CoreError::Invalid(format!(
            "a micro-batch of {rows} rows does not hold whole examples of {width} rows"
        )));
    }
    if objective.needs_reference() && batch.reference.len() != rows {
        return Err(CoreError::Invalid(format!(
            "{} reference log-probs for {rows} rows",
            batch.reference.len()
        )));
    }
    Ok(())
}

/// [`micro_loss`] from the rows' summed log-probs `policy` (`[rows]`).
fn loss_of(
    policy: Tensor<1>,
    collated: &crate::infer::score::Collated,
    objective: &Objective,
    batch: &MicroBatch,
    share: Share,
    micro: usize,
    packed: &mut Packed,
) -> Result<Tensor<1>> {
    let device = policy.device();
    let rows = batch.rows.len();
    let n = rows / objective.rows_per_example();
    let reference =
        || Tensor::<1>::from_data(TensorData::new(batch.reference.clone(), [rows]), &device);
    let counts = |range: std::ops::Range<usize>| {
        let v: Vec<f32> = collated.n_tokens[range].iter().map(|&t| t as f32).collect();
        let len = v.len();
        Tensor::<1>::from_data(TensorData::new(v, [len]), &device)
    };
    Ok(match *objective {
        Objective::Clo {
            beta,
            lambda,
            reduction,
            dpop,
        } => {
            let terms = clo_positive_loss(
                policy,
                reference(),
                counts(2 * n..3 * n),
                beta,
                lambda,
                reduction,
                dpop,
            );
            let loss = if share == Share::WHOLE {
                terms.loss
            } else {
                let sft = match reduction {
                    NllReduction::TokenMean => share.tokens,
                    NllReduction::SequenceMean => share.examples,
                };
                terms.loss_sft.clone() * (lambda * sft)
                    + terms.loss_cl.clone() * ((1.0 - lambda) * share.examples)
            };
            let scale = |t: Tensor<1>, w: f64| if share == Share::WHOLE { t } else { t * w };
            packed.push(loss.clone());
            packed.push(scale(
                terms.loss_sft,
                match reduction {
                    NllReduction::TokenMean => share.tokens,
                    NllReduction::SequenceMean => share.examples,
                },
            ));
            packed.push(scale(terms.loss_cl, share.examples));
            packed.push_rewards(&terms.en);
            packed.push_rewards(&terms.tgt);
            let english = [vec![true; n], vec![false; n]].concat();
            packed.layout.push((micro, n, english));
            loss
        }
        Objective::Dpo { beta, dpop } => {
            if batch.english.len() != n {
                return Err(CoreError::Invalid(format!(
                    "{} directions for {n} preference pairs",
                    batch.english.len()
                )));
            }
            let reference = reference();
            let terms = dpo_positive_loss(
                policy.clone().narrow(0, 0, n),
                policy.narrow(0, n, n),
                reference.clone().narrow(0, 0, n),
                reference.narrow(0, n, n),
                beta,
                dpop,
            );
            let loss = if share == Share::WHOLE {
                terms.loss.clone()
            } else {
                terms.loss.clone() * share.examples
            };
            packed.push(loss.clone());
            packed.push_rewards(&terms);
            packed.layout.push((micro, n, batch.english.clone()));
            loss
        }
        Objective::Sft { reduction } => {
            let loss = nll(policy, counts(0..n), reduction);
            let loss = match (share == Share::WHOLE, reduction) {
                (true, _) => loss,
                (false, NllReduction::TokenMean) => loss * share.tokens,
                (false, NllReduction::SequenceMean) => loss * share.examples,
            };
            packed.push(loss.clone());
            packed.layout.push((micro, 0, Vec::new()));
            loss
        }
    })
}

/// One micro-batch's share of a step: its loss is scaled by `scale`, and `chunk` positions of
/// log-probs are formed at a time (0: all).
struct MicroJob<'a> {
    objective: &'a Objective,
    batch: &'a MicroBatch,
    share: Share,
    micro: usize,
    scale: f64,
    chunk: usize,
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
fn micro_gradients(
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
    collated: &crate::infer::score::Collated,
    job: &MicroJob<'_>,
    packed: &mut Packed,
    accumulator: &mut GradientsAccumulator<CausalLm>,
) -> Result<burn::tensor::Gradients> {
    use crate::infer::score::{chunked_logps, position_logps};
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

/// Where a shard's logged numbers go: (micro-batch, pairs per direction block, DPO directions).
type ShardLayout = (usize, usize, Vec<bool>);

/// A shard this process computes: (local device, micro-batch, slot in the global layout, shard).
type LocalShard = (usize, usize, usize, Shard);

/// A step whose gradients are computed and whose numbers await their one read-back.
struct Pending {
    grads: GradientsParams,
    packed: Packed,
    tokens: usize,
    /// With a collective: every process's shard layout, in rank order.
    global: Option<Vec<(usize, usize, Vec<bool>)>>,
    /// With a collective: where this process's shards lie in the global layout.
    slots: Vec<usize>,
}

/// The optimizer of a training: its objective, its settings and AdamW's state; with
/// [`Trainer::with_replicas`], the model replicas of data parallelism, and with
/// [`Trainer::with_collective`], the processes gradients are summed over.
pub struct Trainer {
    pub objective: Objective,
    pub settings: OptimizerSettings,
    optim: ModuleOptimizer,
    replicas: Replicas,
    collective: Option<Arc<dyn Collective>>,
    /// Positions per chunk of the chunked log-probs (0: the whole sequence at once).
    logp_chunk: usize,
    /// Per-layer checkpoints (see [`micro_gradients`]).
    layer_checkpoints: bool,
}

impl Trainer {
    pub fn new(objective: Objective, settings: OptimizerSettings) -> Self {
        Self {
            objective,
            settings,
            optim: settings.optimizer(),
            replicas: Replicas::new(&[]),
            collective: None,
            logp_chunk: 0,
            layer_checkpoints: false,
        }
    }

    /// Per-layer activation checkpointing (see [`micro_gradients`]): one decoder layer's
    /// activations are kept at a time, each recomputed from its input in the backward pass.
    pub fn with_grad_checkpoint(mut self, on: bool) -> Self {
        self.layer_checkpoints = on;
        self
    }

    /// Log-probs `chunk` positions at a time (see [`head_backward`]): the `[rows, seq,
    /// vocab]` logits are never kept for the backward pass. 0 turns it off.
    pub fn with_logp_chunk(mut self, chunk: usize) -> Self {
        self.logp_chunk = chunk;
        self
    }

    /// Data parallelism: replicas of the model on `devices` besides the model's own; every
    /// micro-batch is split across all of them by whole examples and their gradients summed on
    /// the model's device before one update. The result equals one device with the same batch.
    pub fn with_replicas(mut self, devices: &[Device]) -> Self {
        self.replicas = Replicas::new(devices);
        self
    }

    /// Data parallelism across processes: each takes its part of every micro-batch (split by
    /// whole examples, by rank), and gradients and logged numbers are summed by `collective`
    /// before every process applies the same update.
    pub fn with_collective(mut self, collective: Arc<dyn Collective>) -> Self {
        self.collective = Some(collective);
        self
    }

    /// Devices a step runs on in this process (the model's and the replicas').
    pub fn local_devices(&self) -> usize {
        self.replicas.len() + 1
    }

    /// AdamW's state (saved in checkpoints).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// Replaces AdamW's state (on resume).
    pub fn set_optimizer(&mut self, optim: ModuleOptimizer) {
        self.optim = optim;
    }

    /// A fresh AdamW of this trainer's settings (to load saved state into).
    pub fn fresh_optimizer(&self) -> ModuleOptimizer {
        self.settings.optimizer()
    }

    /// The shards of every micro-batch that this process computes, as (local device, micro-batch
    /// index, shard), and the layout of every shard of every process (in rank order) when a
    /// collective is set.
    fn plan(&self, batches: &[MicroBatch]) -> (Vec<LocalShard>, Option<Vec<ShardLayout>>) {
        let local = self.local_devices();
        let (rank, ranks) = match &self.collective {
            Some(c) => (c.rank(), c.size()),
            None => (0, 1),
        };
        let mut mine = Vec::new();
        let mut global = Vec::new();
        for (m, batch) in batches.iter().enumerate() {
            for r in 0..ranks {
                for (d, shard) in shards_of(&self.objective, batch, ranks, r, local) {
                    if ranks > 1 {
                        let n = shard.batch.rows.len() / self.objective.rows_per_example();
                        let english = match self.objective {
                            Objective::Clo { .. } => [vec![true; n], vec![false; n]].concat(),
                            Objective::Dpo { .. } => shard.batch.english.clone(),
                            Objective::Sft { .. } => Vec::new(),
                        };
                        let pairs = if matches!(self.objective, Objective::Sft { .. }) {
                            0
                        } else {
                            n
                        };
                        global.push((m, pairs, english));
                    }
                    if r == rank {
                        mine.push((d, m, global.len().saturating_sub(1), shard));
                    }
                }
            }
        }
        (mine, (ranks > 1).then_some(global))
    }

    fn forward_backward(&mut self, model: &CausalLm, batches: &[MicroBatch]) -> Result<Pending> {
        if batches.is_empty() {
            return Err(CoreError::Invalid("a step needs a micro-batch".into()));
        }
        let replicas = self.replicas.synced(model);
        let models: Vec<&CausalLm> = std::iter::once(model).chain(&replicas).collect();
        let (mine, global) = self.plan(batches);
        let tokens = mine.iter().map(|(_, _, _, s)| s.batch.tokens()).sum();
        let slots = mine.iter().map(|(_, _, slot, _)| *slot).collect();
        let objective = self.objective;
        let chunk = self.logp_chunk;
        let layered = self.layer_checkpoints;
        let micro_batches = batches.len();
        let main = model.device();
        let work = |d: usize, (m, shard): (usize, Shard)| -> Result<(GradientsParams, Packed)> {
            let replica = models[d];
            let mut packed = Packed {
                layout: Vec::new(),
                values: Vec::new(),
            };
            let job = MicroJob {
                objective: &objective,
                batch: &shard.batch,
                share: shard.share,
                micro: m,
                scale: 1.0 / micro_batches as f64,
                chunk,
            };
            let grads = micro_gradients(replica, &job, layered, &mut packed)?;
            if d != 0 {
                packed.values = packed
                    .values
                    .into_iter()
                    .map(|t| t.to_device(&main))
                    .collect();
                return Ok((grads.to_device(&main, replica), packed));
            }
            Ok((grads, packed))
        };
        let mut packed = Packed {
            layout: Vec::new(),
            values: Vec::new(),
        };
        let mut accumulator = GradientsAccumulator::<CausalLm>::new();
        // Micro-batches one after the other (what accumulation saves is memory); the shards of
        // one micro-batch at once, one thread per device.
        let mut mine = mine.into_iter().peekable();
        while let Some(first) = mine.next() {
            let m = first.1;
            let mut group = vec![(first.0, (m, first.3))];
            while let Some(next) = mine.next_if(|x| x.1 == m) {
                group.push((next.0, (m, next.3)));
            }
            for result in run_on_replicas(group, work) {
                let (grads, part) = result?;
                accumulator.accumulate(model, grads);
                packed.layout.extend(part.layout);
                packed.values.extend(part.values);
            }
        }
        let grads = accumulator.grads();
        if self.collective.is_none() {
            let norm = squared_grad_norm(model, &grads)
                .unwrap_or_else(|| Tensor::<1>::zeros([1], &model.device()));
            packed.push(norm);
        }
        Ok(Pending {
            grads,
            packed,
            tokens,
            global,
            slots,
        })
    }

    /// Across processes: sums the gradients and the logged numbers of every rank (each rank
    /// fills the slots of its own shards), then appends the global gradient norm.
    fn reduce_across(
        &self,
        collective: &dyn Collective,
        model: &CausalLm,
        mut pending: Pending,
        local: Vec<f32>,
    ) -> Result<(Pending, Vec<f32>)> {
        let global = pending.global.take().unwrap_or_default();
        let width = |(_, n, english): &(usize, usize, Vec<bool>)| -> usize {
            match self.objective {
                Objective::Clo { .. } => 3 + 4 * n,
                Objective::Dpo { .. } => 1 + 2 * english.len(),
                Objective::Sft { .. } => 1,
            }
        };
        let mut offsets = Vec::with_capacity(global.len());
        let mut at = 0;
        for entry in &global {
            offsets.push(at);
            at += width(entry);
        }
        let mut values = vec![0f32; at];
        let mut taken = 0;
        for &slot in &pending.slots {
            let w = width(&global[slot]);
            values[offsets[slot]..offsets[slot] + w].copy_from_slice(&local[taken..taken + w]);
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

    /// Unpacks the read-back numbers and applies the update (when they are finite).
    fn finish(
        &mut self,
        model: CausalLm,
        pending: Pending,
        values: &[f32],
        lr: f64,
    ) -> (CausalLm, StepReport) {
        let mut at = 0;
        let mut take = |k: usize| {
            let s: Vec<f64> = values[at..at + k].iter().map(|&v| f64::from(v)).collect();
            at += k;
            s
        };
        // Shards of one micro-batch log their shares of its losses: add them up.
        let micro_batches = pending
            .packed
            .layout
            .iter()
            .map(|l| l.0 + 1)
            .max()
            .unwrap_or(0);
        let (mut losses, mut sft, mut cl, mut pairs) = (
            vec![0.0; micro_batches],
            vec![0.0; micro_batches],
            vec![0.0; micro_batches],
            Vec::new(),
        );
        for (m, n, english) in &pending.packed.layout {
            let loss = take(1)[0];
            losses[*m] += loss;
            match self.objective {
                Objective::Clo { .. } => {
                    sft[*m] += take(1)[0];
                    cl[*m] += take(1)[0];
                }
                Objective::Dpo { .. } => cl[*m] += loss,
                Objective::Sft { .. } => sft[*m] += loss,
            }
            // Rewards come in (chosen, rejected) blocks of n, one or two directions.
            let mut flags = english.iter();
            for _ in 0..english.len() / n.max(&1) {
                let (c, r) = (take(*n), take(*n));
                for (c, r) in c.into_iter().zip(r) {
                    pairs.push((*flags.next().expect("a direction per pair"), c, r));
                }
            }
        }
        let (sft, cl) = match self.objective {
            Objective::Clo { .. } => (sft, cl),
            Objective::Dpo { .. } => (Vec::new(), cl),
            Objective::Sft { .. } => (sft, Vec::new()),
        };
        let grad_norm = take(1)[0].sqrt();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let mut report = StepReport {
            loss: mean(&losses).expect("one micro-batch at least"),
            loss_sft: mean(&sft),
            loss_cl: mean(&cl),
            pairs,
            grad_norm,
            tokens: pending.tokens,
            applied: false,
        };
        if report.non_finite().is_some() {
            return (model, report);
        }
        let grads = clip_to(
            &model,
            pending.grads,
            grad_norm,
            self.settings.max_grad_norm,
        );
        report.applied = true;
        (self.optim.step(lr, model, grads), report)
    }

    /// One optimizer step over `batches` (gradient accumulation: each micro-batch's loss is
    /// divided by their number) at learning rate `lr`. `model` must live on an autodiff device.
    /// Reads back once, blocking; see [`Self::step_async`] for wasm.
    pub fn step(
        &mut self,
        model: CausalLm,
        batches: &[MicroBatch],
        lr: f64,
    ) -> Result<(CausalLm, StepReport)> {
        let pending = self.forward_backward(&model, batches)?;
        // A rank with fewer examples than devices may have nothing to compute.
        let values = if pending.packed.values.is_empty() {
            Vec::new()
        } else {
            read(Tensor::cat(pending.packed.values.clone(), 0).into_data())?
        };
        let (pending, values) = match self.collective.clone() {
            Some(c) => self.reduce_across(c.as_ref(), &model, pending, values)?,
            None => (pending, values),
        };
        Ok(self.finish(model, pending, &values, lr))
    }

    /// [`Self::step`] with an awaited read-back (what the browser needs).
    pub async fn step_async(
        &mut self,
        model: CausalLm,
        batches: &[MicroBatch],
        lr: f64,
    ) -> Result<(CausalLm, StepReport)> {
        if self.collective.is_some() {
            return Err(CoreError::Invalid(
                "a step across processes blocks; use Trainer::step".into(),
            ));
        }
        let pending = self.forward_backward(&model, batches)?;
        let data = Tensor::cat(pending.packed.values.clone(), 0)
            .into_data_async()
            .await
            .map_err(|e| CoreError::Internal(format!("reading the step's numbers back: {e:?}")))?;
        let values = read(data)?;
        Ok(self.finish(model, pending, &values, lr))
    }

    /// Mean loss over `batches` weighted by their examples (validation), without gradients:
    /// `model` is a plain (inference) model. One read-back.
    pub fn evaluate(&self, model: &CausalLm, batches: &[MicroBatch]) -> Result<f64> {
        let (total, examples) = self.evaluate_lazy(model, batches)?;
        let values = read(total.into_data())?;
        Ok(f64::from(values[0]) / examples.max(1) as f64)
    }

    fn evaluate_lazy(
        &self,
        model: &CausalLm,
        batches: &[MicroBatch],
    ) -> Result<(Tensor<1>, usize)> {
        let width = self.objective.rows_per_example();
        let mut total: Option<Tensor<1>> = None;
        let mut examples = 0;
        for batch in batches {
            let mut packed = Packed {
                layout: Vec::new(),
                values: Vec::new(),
            };
            let n = batch.rows.len() / width;
            let loss =
                micro_loss(model, &self.objective, batch, Share::WHOLE, 0, &mut packed)? * n as f64;
            examples += n;
            total = Some(match total {
                Some(t) => t + loss,
                None => loss,
            });
        }
        let total = total.ok_or_else(|| CoreError::Invalid("nothing to evaluate".into()))?;
        Ok((total, examples))
    }
}

fn read(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| CoreError::Internal(format!("reading numbers back: {e:?}")))
}

#[cfg(test)]
mod tests;
