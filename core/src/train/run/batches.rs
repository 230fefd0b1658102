//! The batches of a run: the seeded train/validation split, the objective of a stage, the
//! micro-batches of each optimizer step (seeded epoch permutations, gradient accumulation) and
//! the validation batches.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{CoreError, Result};
use crate::load::models::CausalLm;
use crate::train::batch::TokenizedQuad;
use crate::train::config::{Method, RunConfig};
use crate::train::examples::Examples;
use crate::train::optim::Schedule;
use crate::train::step::{MicroBatch, Objective, Trainer};

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

/// The objective a stage of `config` trains.
pub fn objective(stage: Method, config: &RunConfig) -> Objective {
    match stage {
        Method::Clo => Objective::Clo {
            beta: config.beta,
            lambda: config.lambda,
            reduction: config.nll_reduction,
            dpop: config.dpop,
        },
        Method::Dpo => Objective::Dpo {
            beta: config.beta,
            dpop: config.dpop,
        },
        _ => Objective::Sft {
            reduction: config.nll_reduction,
        },
    }
}

/// The micro-batches of optimizer step `step` of stage `stage` (`grad_accum` of them) and the
/// epoch they come from.
pub(crate) fn step_batches(
    step: usize,
    examples: &Examples,
    refs: &[Vec<f32>],
    config: &RunConfig,
    stage: usize,
) -> (usize, Vec<MicroBatch>) {
    let mut epoch = 0;
    let batches = (0..config.grad_accum)
        .map(|k| {
            let (e, idx) = micro_batch(step * config.grad_accum + k, examples.len(), config, stage);
            epoch = e;
            micro_batch_of(examples, refs, &idx, config.max_len)
        })
        .collect();
    (epoch, batches)
}

/// A stage's optimizer steps over `examples` training examples, and its learning-rate schedule.
pub(crate) fn stage_schedule(config: &RunConfig, examples: usize) -> (usize, Schedule) {
    let per_epoch = examples.div_ceil(config.batch_size);
    let total = config
        .steps
        .unwrap_or(config.epochs * per_epoch.div_ceil(config.grad_accum));
    let schedule = Schedule {
        lr: config.lr,
        min_lr: config.min_lr,
        warmup_steps: config.warmup_steps(total),
        total_steps: total,
    };
    (total, schedule)
}

/// The micro-batch of examples `idx`: their rows, the rows' reference log-probs (in the same
/// block layout) and, for DPO, each pair's direction.
fn micro_batch_of(
    examples: &Examples,
    refs: &[Vec<f32>],
    idx: &[usize],
    max_len: usize,
) -> MicroBatch {
    let width = examples.ref_width();
    let reference = if refs.is_empty() {
        Vec::new()
    } else {
        (0..width)
            .flat_map(|k| idx.iter().map(move |&i| refs[i][k]))
            .collect()
    };
    let english = match examples {
        Examples::Dpo { english, .. } => idx.iter().map(|&i| english[i]).collect(),
        _ => Vec::new(),
    };
    MicroBatch {
        rows: examples.rows(idx, max_len),
        reference,
        english,
    }
}

/// Mean loss over a whole example set (validation), batch by batch, weighted by batch size.
pub(super) fn evaluate(
    trainer: &Trainer,
    model: &CausalLm,
    examples: &Examples,
    refs: &[Vec<f32>],
    config: &RunConfig,
) -> Result<f64> {
    let all: Vec<usize> = (0..examples.len()).collect();
    let batches: Vec<MicroBatch> = all
        .chunks(config.batch_size)
        .map(|chunk| micro_batch_of(examples, refs, chunk, config.max_len))
        .collect();
    trainer.evaluate(model, &batches)
}

/// Example indices of micro-batch `m` of a stage: epochs are seeded permutations (or the file
/// order with `shuffle = false`), the last batch of an epoch may be smaller.
pub(crate) fn micro_batch(
    m: usize,
    n: usize,
    config: &RunConfig,
    stage: usize,
) -> (usize, Vec<usize>) {
    let per_epoch = n.div_ceil(config.batch_size);
    let (epoch, b) = (m / per_epoch, m % per_epoch);
    let mut order: Vec<usize> = (0..n).collect();
    if config.shuffle {
        let seed = config
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((stage as u64) << 32 | epoch as u64);
        order.shuffle(&mut StdRng::seed_from_u64(seed));
    }
    let end = ((b + 1) * config.batch_size).min(n);
    (epoch, order[b * config.batch_size..end].to_vec())
}
