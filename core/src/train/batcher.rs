//! The one batcher of fine-tuning: from tokenized quadruples to the micro-batches a step takes.
//! [`split`] holds out the validation quadruples; a [`Batcher`] owns one stage's examples
//! (pairing: CLO quadruples, DPO pairs or SFT pairs, [`Examples`]), their seeded epoch order,
//! the micro-batches of each optimizer step (gradient accumulation), the rows each one pads to
//! (cut at `max_len`), the validation batches and the reference pass's batches. `clo train`, the
//! server's runs, the study and quickstart (both through `train`), the browser's
//! [`Session`](super::session::Session) and `clo bench train` all batch through it. A step
//! splits its micro-batch across devices and processes by whole examples
//! ([`super::parallel::split_micro_batch`]).

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{CoreError, Result};
use crate::train::batch::TokenizedQuad;
use crate::train::config::{Method, RunConfig};
use crate::train::examples::Examples;
use crate::train::objective::MicroBatch;
use crate::train::optim::Schedule;

/// The data of a run after tokenizing and splitting.
pub(crate) struct Split {
    pub(crate) train: Vec<TokenizedQuad>,
    pub(crate) val: Vec<TokenizedQuad>,
    pub(crate) dropped: usize,
}

/// Splits quadruples (not pairs, so no direction of a validation quadruple leaks into training)
/// with a seeded shuffle: `max(1, round(fraction * n))` go to validation when fraction > 0.
pub(crate) fn split(
    quads: Vec<TokenizedQuad>,
    dropped: usize,
    config: &RunConfig,
) -> Result<Split> {
    let n = quads.len();
    let n_val = if config.val_fraction > 0.0 {
        ((config.val_fraction * n as f64).round() as usize).max(1)
    } else {
        0
    };
    if n < n_val + 1 {
        return Err(CoreError::Invalid(format!(
            "{}: {n} usable quadruple(s) ({dropped} dropped for prompts of max_len or more) leave none for training after a validation split of {n_val}; add data or set the `val_fraction` setting to 0",
            config.data.display()
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(config.seed ^ 0x5eed_5711));
    let mut is_val = vec![false; n];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (q, v) in quads.into_iter().zip(is_val) {
        if v { val.push(q) } else { train.push(q) }
    }
    Ok(Split {
        train,
        val,
        dropped,
    })
}

/// One stage's examples and how they are batched.
#[derive(Debug, Clone)]
pub struct Batcher {
    examples: Examples,
    batch_size: usize,
    grad_accum: usize,
    max_len: usize,
    shuffle: bool,
    seed: u64,
    /// The stage's index in the run (it seeds the stage's epoch order).
    stage: usize,
}

impl Batcher {
    /// The batches of stage number `stage` (its single-objective `method`) over `quads`, with
    /// the batch size, accumulation, length, order and seed of `config`.
    pub fn new(method: Method, quads: &[TokenizedQuad], config: &RunConfig, stage: usize) -> Self {
        Self::of_examples(
            Examples::for_method(method, quads, config.max_len),
            config,
            stage,
        )
    }

    /// The batches of examples already paired.
    pub fn of_examples(examples: Examples, config: &RunConfig, stage: usize) -> Self {
        Batcher {
            examples,
            batch_size: config.batch_size.max(1),
            grad_accum: config.grad_accum.max(1),
            max_len: config.max_len,
            shuffle: config.shuffle,
            seed: config.seed,
            stage,
        }
    }

    pub fn examples(&self) -> &Examples {
        &self.examples
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Examples per micro-batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Rows are cut to this many tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The stage's optimizer steps (`steps`, else `epochs` passes) and its learning-rate
    /// schedule.
    pub fn schedule(&self, config: &RunConfig) -> (usize, Schedule) {
        let per_epoch = self.len().div_ceil(self.batch_size);
        let total = config
            .steps
            .unwrap_or(config.epochs * per_epoch.div_ceil(self.grad_accum));
        let schedule = Schedule {
            lr: config.lr,
            min_lr: config.min_lr,
            warmup_steps: config.warmup_steps(total),
            total_steps: total,
        };
        (total, schedule)
    }

    /// The epoch of micro-batch `m` of the stage and its examples: epochs are seeded
    /// permutations (or the file order with `shuffle = false`), the last batch of an epoch may
    /// be smaller.
    pub fn indices(&self, m: usize) -> (usize, Vec<usize>) {
        let n = self.len();
        let per_epoch = n.div_ceil(self.batch_size).max(1);
        let (epoch, b) = (m / per_epoch, m % per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        if self.shuffle {
            let seed = self
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add((self.stage as u64) << 32 | epoch as u64);
            order.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        let start = (b * self.batch_size).min(n);
        let end = ((b + 1) * self.batch_size).min(n);
        (epoch, order[start..end].to_vec())
    }

    /// The examples optimizer step `step` uses (all its micro-batches), sorted, each once.
    pub fn step_examples(&self, step: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.grad_accum)
            .flat_map(|k| self.indices(step * self.grad_accum + k).1)
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The micro-batches of optimizer step `step` (`grad_accum` of them), with their reference
    /// log-probs from `refs` (`[example][block]`; empty when the objective has none), and the
    /// epoch they come from.
    pub fn step(&self, step: usize, refs: &[Vec<f32>]) -> (usize, Vec<MicroBatch>) {
        let mut epoch = 0;
        let batches = (0..self.grad_accum)
            .map(|k| {
                let (e, idx) = self.indices(step * self.grad_accum + k);
                epoch = e;
                self.micro_batch(&idx, refs)
            })
            .collect();
        (epoch, batches)
    }

    /// The micro-batch of examples `idx`: their rows, the rows' reference log-probs (in the same
    /// block layout) and, for DPO, each pair's direction.
    pub fn micro_batch(&self, idx: &[usize], refs: &[Vec<f32>]) -> MicroBatch {
        self.examples.micro_batch(idx, refs, self.max_len)
    }

    /// Every example in file order, `batch_size` at a time (validation).
    pub fn all(&self, refs: &[Vec<f32>]) -> Vec<MicroBatch> {
        self.chunks()
            .iter()
            .map(|chunk| self.micro_batch(chunk, refs))
            .collect()
    }

    /// Every example's index in file order, `batch_size` at a time: the batches of a pass over
    /// the whole set (validation, the reference pass).
    pub fn chunks(&self) -> Vec<Vec<usize>> {
        let all: Vec<usize> = (0..self.len()).collect();
        all.chunks(self.batch_size).map(<[usize]>::to_vec).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quads(n: usize) -> Vec<TokenizedQuad> {
        (0..n as u32)
            .map(|i| TokenizedQuad {
                en_prompt: vec![1, i],
                tgt_prompt: vec![2, i],
                en_response: vec![3, i, 4],
                tgt_response: vec![5, i],
            })
            .collect()
    }

    /// Each epoch visits every example once, in a seeded order that differs between epochs
    /// and stages; accumulation takes consecutive micro-batches; the file order without shuffle.
    #[test]
    fn epochs_are_seeded_permutations() {
        let config = RunConfig {
            batch_size: 3,
            grad_accum: 2,
            ..RunConfig::default()
        };
        let b = Batcher::new(Method::Clo, &quads(7), &config, 0);
        let epoch =
            |e: usize| -> Vec<usize> { (0..3).flat_map(|m| b.indices(e * 3 + m).1).collect() };
        for e in 0..3 {
            let mut seen = epoch(e);
            assert_eq!(b.indices(e * 3).0, e);
            seen.sort_unstable();
            assert_eq!(seen, (0..7).collect::<Vec<_>>());
        }
        assert_ne!(epoch(0), epoch(1));
        assert_eq!(
            b.indices(2).1.len(),
            1,
            "the last batch of an epoch is smaller"
        );
        let other_stage = Batcher::new(Method::Clo, &quads(7), &config, 1);
        assert_ne!(other_stage.indices(0).1, b.indices(0).1);
        let (_, step) = b.step(0, &[]);
        assert_eq!(step.len(), 2);
        assert_eq!(step[0].rows.len(), 4 * 3, "4 rows per quadruple");
        assert_eq!(b.step_examples(0).len(), 6);
        let in_order = Batcher::new(
            Method::Sft,
            &quads(7),
            &RunConfig {
                shuffle: false,
                batch_size: 4,
                ..RunConfig::default()
            },
            0,
        );
        assert_eq!(in_order.indices(0).1, vec![0, 1, 2, 3]);
        assert_eq!(in_order.all(&[]).len(), 4, "14 pairs, 4 at a time");
        assert_eq!(
            in_order.schedule(&RunConfig::default()).0,
            14_usize.div_ceil(4)
        );
    }

    /// The reference log-probs travel with their rows, block by block.
    #[test]
    fn reference_log_probs_follow_their_rows() {
        let config = RunConfig {
            shuffle: false,
            batch_size: 2,
            ..RunConfig::default()
        };
        let b = Batcher::new(Method::Dpo, &quads(2), &config, 0);
        let refs: Vec<Vec<f32>> = (0..4).map(|i| vec![i as f32, 10.0 + i as f32]).collect();
        let mb = b.micro_batch(&[3, 0], &refs);
        assert_eq!(mb.reference, vec![3.0, 0.0, 13.0, 10.0]);
        assert_eq!(mb.english, vec![false, true]);
        assert_eq!(mb.rows.len(), 4);
    }
}
