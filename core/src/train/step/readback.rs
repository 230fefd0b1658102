//! What a step reads back from the device, and in which order, defined once.
//!
//! Every number a step logs (each shard's loss and its parts, its preference rewards, then the
//! squared gradient norm) is packed into one tensor, read in one transfer. [`Logged`] says
//! what one shard logs and how wide it is; [`Packed`] pushes a shard's tensors in that order;
//! the reduce across processes places shards by [`Logged::width`]; [`unpack`] reads them
//! back the same way and checks that the numbers add up to the layout.

use burn::prelude::*;

use super::Objective;
use crate::error::{CoreError, Result};
use crate::train::loss::PreferenceTerms;
use crate::train::objective::MicroBatch;

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

/// What one shard of micro-batch `micro` logs, in read-back order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Logged {
    /// The loss, its SFT part, its preference part; then the English direction's chosen and
    /// rejected rewards (`pairs` each), then the target direction's.
    Clo { micro: usize, pairs: usize },
    /// The loss; then the chosen and rejected rewards of each pair, `english[i]` being pair
    /// `i`'s direction.
    Dpo { micro: usize, english: Vec<bool> },
    /// The loss.
    Sft { micro: usize },
}

impl Logged {
    /// What a shard holding `batch` (part of micro-batch `micro`) logs under `objective`.
    pub(super) fn of(objective: &Objective, micro: usize, batch: &MicroBatch) -> Self {
        match objective {
            Objective::Clo { .. } => Logged::Clo {
                micro,
                pairs: batch.rows.len() / objective.rows_per_example(),
            },
            Objective::Dpo { .. } => Logged::Dpo {
                micro,
                english: batch.english.clone(),
            },
            Objective::Sft { .. } => Logged::Sft { micro },
        }
    }

    pub(super) fn micro(&self) -> usize {
        match self {
            Logged::Clo { micro, .. } | Logged::Dpo { micro, .. } | Logged::Sft { micro } => *micro,
        }
    }

    /// How many numbers it occupies in the read-back.
    pub(super) fn width(&self) -> usize {
        match self {
            Logged::Clo { pairs, .. } => 3 + 4 * pairs,
            Logged::Dpo { english, .. } => 1 + 2 * english.len(),
            Logged::Sft { .. } => 1,
        }
    }
}

/// The tensors a step will read back, each shard's in its [`Logged`] order, then (pushed last,
/// by [`Packed::push_norm`]) the squared gradient norm.
#[derive(Default)]
pub(super) struct Packed {
    pub(super) layout: Vec<Logged>,
    values: Vec<Tensor<1>>,
}

impl Packed {
    /// Appends a shard's numbers; their widths must add up to its layout's.
    fn push(&mut self, logged: Logged, values: Vec<Tensor<1>>) -> Result<()> {
        let width: usize = values.iter().map(|t| t.dims()[0]).sum();
        if width != logged.width() {
            return Err(CoreError::Internal(format!(
                "a shard logs {width} numbers where its layout {logged:?} has {}",
                logged.width()
            )));
        }
        self.values.extend(values.into_iter().map(|t| t.detach()));
        self.layout.push(logged);
        Ok(())
    }

    /// A CLO shard: its loss and parts (`[1]` each) and both directions' rewards.
    pub(super) fn clo(
        &mut self,
        micro: usize,
        [loss, sft, cl]: [Tensor<1>; 3],
        english: &PreferenceTerms,
        target: &PreferenceTerms,
    ) -> Result<()> {
        let pairs = english.chosen_rewards.dims()[0];
        let values = vec![
            loss,
            sft,
            cl,
            english.chosen_rewards.clone(),
            english.rejected_rewards.clone(),
            target.chosen_rewards.clone(),
            target.rejected_rewards.clone(),
        ];
        self.push(Logged::Clo { micro, pairs }, values)
    }

    /// A DPO shard: its loss and each pair's rewards, `english` giving the pairs' directions.
    pub(super) fn dpo(
        &mut self,
        micro: usize,
        loss: Tensor<1>,
        terms: &PreferenceTerms,
        english: Vec<bool>,
    ) -> Result<()> {
        let values = vec![
            loss,
            terms.chosen_rewards.clone(),
            terms.rejected_rewards.clone(),
        ];
        self.push(Logged::Dpo { micro, english }, values)
    }

    /// An SFT shard: its loss.
    pub(super) fn sft(&mut self, micro: usize, loss: Tensor<1>) -> Result<()> {
        self.push(Logged::Sft { micro }, vec![loss])
    }

    /// The squared gradient norm, after every shard's numbers.
    pub(super) fn push_norm(&mut self, squared_norm: Tensor<1>) {
        self.values.push(squared_norm.detach());
    }

    /// Another device's or micro-batch's shards, after these.
    pub(super) fn extend(&mut self, other: Packed) {
        self.layout.extend(other.layout);
        self.values.extend(other.values);
    }

    /// The same numbers on `device`.
    pub(super) fn into_device(self, device: &Device) -> Self {
        Packed {
            layout: self.layout,
            values: self
                .values
                .into_iter()
                .map(|t| t.to_device(device))
                .collect(),
        }
    }

    /// Everything as one tensor, or `None` when there is nothing (a rank with no shard).
    pub(super) fn tensor(&self) -> Option<Tensor<1>> {
        (!self.values.is_empty()).then(|| Tensor::cat(self.values.clone(), 0))
    }
}

/// Where each shard's numbers start in a read-back of `layout`, and the total width.
pub(super) fn offsets(layout: &[Logged]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(layout.len());
    let mut at = 0;
    for logged in layout {
        offsets.push(at);
        at += logged.width();
    }
    (offsets, at)
}

/// A step's numbers, read back: per micro-batch (the sum of its shards' shares) the loss and
/// its parts, every pair's rewards, and the gradient norm.
pub(super) struct Unpacked {
    pub(super) losses: Vec<f64>,
    pub(super) sft: Vec<f64>,
    pub(super) cl: Vec<f64>,
    pub(super) pairs: Vec<PairRewards>,
    pub(super) grad_norm: f64,
}

/// Reads `values` (laid out by `layout`, then the squared gradient norm) back.
pub(super) fn unpack(layout: &[Logged], values: &[f32]) -> Result<Unpacked> {
    let (_, width) = offsets(layout);
    if values.len() != width + 1 {
        return Err(CoreError::Internal(format!(
            "read back {} numbers where the step's layout has {}",
            values.len(),
            width + 1
        )));
    }
    let mut rest = values;
    let mut take = |k: usize| {
        let (head, tail) = rest.split_at(k);
        rest = tail;
        head.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>()
    };
    let micro_batches = layout.iter().map(|l| l.micro() + 1).max().unwrap_or(0);
    let mut out = Unpacked {
        losses: vec![0.0; micro_batches],
        sft: vec![0.0; micro_batches],
        cl: vec![0.0; micro_batches],
        pairs: Vec::new(),
        grad_norm: 0.0,
    };
    // Shards of one micro-batch log their shares of its losses: add them up.
    for logged in layout {
        let m = logged.micro();
        let loss = take(1)[0];
        out.losses[m] += loss;
        match logged {
            Logged::Clo { pairs, .. } => {
                out.sft[m] += take(1)[0];
                out.cl[m] += take(1)[0];
                for english in [true, false] {
                    let (chosen, rejected) = (take(*pairs), take(*pairs));
                    out.pairs.extend(
                        chosen
                            .into_iter()
                            .zip(rejected)
                            .map(|(c, r)| (english, c, r)),
                    );
                }
            }
            Logged::Dpo { english, .. } => {
                out.cl[m] += loss;
                let (chosen, rejected) = (take(english.len()), take(english.len()));
                out.pairs.extend(
                    english
                        .iter()
                        .zip(chosen.into_iter().zip(rejected))
                        .map(|(&e, (c, r))| (e, c, r)),
                );
            }
            Logged::Sft { .. } => out.sft[m] += loss,
        }
    }
    out.grad_norm = take(1)[0].sqrt();
    Ok(out)
}

/// The numbers of a read-back tensor.
pub(super) fn read(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| CoreError::Internal(format!("reading numbers back: {e:?}")))
}
