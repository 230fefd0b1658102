//! The forward pass and the loss of a micro-batch (or of a device's share of one), with what
//! is logged of it pushed to the read-back ([`Packed`]).

use burn::prelude::*;

use super::Objective;
use super::readback::Packed;
use crate::error::{CoreError, Result};
use crate::infer::score::{Collated, batch_logps, collate};
use crate::load::models::CausalLm;
use crate::train::loss::{NllReduction, clo_positive_loss, dpo_positive_loss, nll};
use crate::train::objective::MicroBatch;
use crate::train::parallel::Share;

/// The loss of a micro-batch as validation computes it (training goes through
/// [`micro_gradients`](super::backward::micro_gradients)), with what is logged of it pushed to `packed`.
///
/// `share` is the batch's part of a larger micro-batch split across devices (data parallelism):
/// the loss and its logged parts are that share of the whole micro-batch's, so that the shards'
/// losses (and gradients) sum to the whole's. `micro` tags what is logged with the micro-batch.
pub(super) fn micro_loss(
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
pub(super) fn check_batch(objective: &Objective, batch: &MicroBatch) -> Result<()> {
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
pub(super) fn loss_of(
    policy: Tensor<1>,
    collated: &Collated,
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
            let sft = scale(
                terms.loss_sft,
                match reduction {
                    NllReduction::TokenMean => share.tokens,
                    NllReduction::SequenceMean => share.examples,
                },
            );
            let cl = scale(terms.loss_cl, share.examples);
            packed.clo(micro, [loss.clone(), sft, cl], &terms.en, &terms.tgt)?;
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
            packed.dpo(micro, loss.clone(), &terms, batch.english.clone())?;
            loss
        }
        Objective::Sft { reduction } => {
            let loss = nll(policy, counts(0..n), reduction);
            let loss = match (share == Share::WHOLE, reduction) {
                (true, _) => loss,
                (false, NllReduction::TokenMean) => loss * share.tokens,
                (false, NllReduction::SequenceMean) => loss * share.examples,
            };
            packed.sft(micro, loss.clone())?;
            loss
        }
    })
}
