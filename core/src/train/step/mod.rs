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

//! The parts, a file each: the forward pass and losses (`forward`), the backward pass
//! (`backward`), the read-back layout and the report (`readback`), and the shards of data
//! parallelism with the reduce across processes (`shards`).

mod backward;
mod forward;
mod readback;
mod shards;

use std::sync::Arc;

use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use self::backward::{MicroJob, micro_gradients};
use self::forward::micro_loss;
use self::readback::{Logged, Packed, read, unpack};
pub use self::readback::{PairRewards, StepReport};
use self::shards::{plan, reduce_across};
// What a step optimizes and the micro-batch it takes, in their own file (parallel.rs uses them
// too); re-exported so that `train::step::{MicroBatch, Objective}` stay their paths.
pub use super::objective::{MicroBatch, Objective};
use super::optim::{clip_to, squared_grad_norm};
use super::parallel::{Collective, Replicas, Shard, Share, run_on_replicas};
use crate::error::{CoreError, Result};
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

/// A step whose gradients are computed and whose numbers await their one read-back.
struct Pending {
    grads: GradientsParams,
    packed: Packed,
    tokens: usize,
    /// With a collective: what every process's shards log, in rank order.
    global: Option<Vec<Logged>>,
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
    /// The trainer of stage `stage` of a fine-tuning run with `config`: its objective, AdamW
    /// with its weight decay and clipping, and its memory settings (what `clo train` and the
    /// browser's session both step with).
    pub fn for_stage(
        stage: crate::train::config::Method,
        config: &crate::train::config::RunConfig,
    ) -> Self {
        Trainer::new(
            crate::train::objective::objective(stage, config),
            OptimizerSettings::fine_tuning(config.weight_decay, config.max_grad_norm),
        )
        .with_logp_chunk(config.logp_chunk)
        .with_grad_checkpoint(config.grad_checkpoint)
    }

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

    fn forward_backward(&mut self, model: &CausalLm, batches: &[MicroBatch]) -> Result<Pending> {
        if batches.is_empty() {
            return Err(CoreError::Invalid("a step needs a micro-batch".into()));
        }
        let replicas = self.replicas.synced(model);
        let models: Vec<&CausalLm> = std::iter::once(model).chain(&replicas).collect();
        let ranks = match &self.collective {
            Some(c) => (c.rank(), c.size()),
            None => (0, 1),
        };
        let (mine, global) = plan(&self.objective, batches, ranks, self.local_devices());
        let tokens = mine.iter().map(|(_, _, _, s)| s.batch.tokens()).sum();
        let slots = mine.iter().map(|(_, _, slot, _)| *slot).collect();
        let objective = self.objective;
        let chunk = self.logp_chunk;
        let layered = self.layer_checkpoints;
        let micro_batches = batches.len();
        let main = model.device();
        let work = |d: usize, (m, shard): (usize, Shard)| -> Result<(GradientsParams, Packed)> {
            let replica = models[d];
            let mut packed = Packed::default();
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
                return Ok((grads.to_device(&main, replica), packed.into_device(&main)));
            }
            Ok((grads, packed))
        };
        let mut packed = Packed::default();
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
                packed.extend(part);
            }
        }
        let grads = accumulator.grads();
        if self.collective.is_none() {
            let norm = squared_grad_norm(model, &grads)
                .unwrap_or_else(|| Tensor::<1>::zeros([1], &model.device()));
            packed.push_norm(norm);
        }
        Ok(Pending {
            grads,
            packed,
            tokens,
            global,
            slots,
        })
    }

    /// Unpacks the read-back numbers and applies the update (when they are finite).
    fn finish(
        &mut self,
        model: CausalLm,
        pending: Pending,
        values: &[f32],
        lr: f64,
    ) -> Result<(CausalLm, StepReport)> {
        let numbers = unpack(&pending.packed.layout, values)?;
        let (sft, cl) = match self.objective {
            Objective::Clo { .. } => (numbers.sft, numbers.cl),
            Objective::Dpo { .. } => (Vec::new(), numbers.cl),
            Objective::Sft { .. } => (numbers.sft, Vec::new()),
        };
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let mut report = StepReport {
            loss: mean(&numbers.losses)
                .ok_or_else(|| CoreError::Internal("a step read back no loss".into()))?,
            loss_sft: mean(&sft),
            loss_cl: mean(&cl),
            pairs: numbers.pairs,
            grad_norm: numbers.grad_norm,
            tokens: pending.tokens,
            applied: false,
        };
        if report.non_finite().is_some() {
            return Ok((model, report));
        }
        let grads = clip_to(
            &model,
            pending.grads,
            report.grad_norm,
            self.settings.max_grad_norm,
        );
        report.applied = true;
        Ok((self.optim.step(lr, model, grads), report))
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
        let values = match pending.packed.tensor() {
            Some(t) => read(t.into_data())?,
            None => Vec::new(),
        };
        let (pending, values) = match self.collective.clone() {
            Some(c) => reduce_across(c.as_ref(), &model, pending, values)?,
            None => (pending, values),
        };
        self.finish(model, pending, &values, lr)
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
        let values = pending
            .packed
            .tensor()
            .ok_or_else(|| CoreError::Internal("a step logged nothing".into()))?;
        let data = values
            .into_data_async()
            .await
            .map_err(|e| CoreError::Internal(format!("reading the step's numbers back: {e:?}")))?;
        let values = read(data)?;
        self.finish(model, pending, &values, lr)
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
            let mut packed = Packed::default();
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

#[cfg(test)]
mod tests;
