//! The training objectives of method.md section 3, as pure functions of `[batch]` sequence
//! log-prob tensors (summed over response tokens, see [`crate::infer::score::sequence_logps`]).

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use serde::{Deserialize, Serialize};

/// How the SFT negative log-likelihood is averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NllReduction {
    /// Summed NLL over all response tokens of the batch / their number (default).
    #[default]
    TokenMean,
    /// Per-sequence summed NLL averaged over sequences (paper eq. 9 read literally).
    SequenceMean,
}

/// Negative log-likelihood of responses.
///
/// # Shapes
/// - logps: `[rows]` summed response log-probs; n_tokens: `[rows]` response token counts
/// - output: `[1]`
pub fn nll(logps: Tensor<1>, n_tokens: Tensor<1>, reduction: NllReduction) -> Tensor<1> {
    match reduction {
        NllReduction::TokenMean => logps.sum().neg() / n_tokens.sum(),
        NllReduction::SequenceMean => logps.mean().neg(),
    }
}

/// The sigmoid preference loss of one direction and what is logged of it.
#[derive(Debug, Clone)]
pub struct PreferenceTerms {
    /// `-mean_i log sigmoid(z_i)`, `[1]`.
    pub loss: Tensor<1>,
    /// `z_i = reward_chosen_i - reward_rejected_i`, `[N]`.
    pub z: Tensor<1>,
    /// `beta * (logp_pi - logp_ref)` of the chosen responses, `[N]`.
    pub chosen_rewards: Tensor<1>,
    /// The same for the rejected responses, `[N]`.
    pub rejected_rewards: Tensor<1>,
}

/// Sigmoid DPO: prefer `chosen` over `rejected` relative to the frozen reference.
///
/// # Shapes
/// - every input: `[N]`; see [`PreferenceTerms`] for the outputs
pub fn dpo_loss(
    pi_chosen: Tensor<1>,
    pi_rejected: Tensor<1>,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    beta: f64,
) -> PreferenceTerms {
    dpo_positive_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta, 0.0)
}

/// DPO-Positive (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
/// DPO-Positive", arXiv:2402.13228): sigmoid DPO whose margin is also penalised when the
/// chosen response becomes less likely than under the reference,
/// `z = beta * (Δ_chosen - Δ_rejected - dpop * max(0, -Δ_chosen))` with
/// `Δ = logp_pi - logp_ref`. `dpop = 0` is plain DPO. The logged rewards stay
/// `beta * Δ`.
///
/// # Shapes
/// - every input: `[N]`; see [`PreferenceTerms`] for the outputs
pub fn dpo_positive_loss(
    pi_chosen: Tensor<1>,
    pi_rejected: Tensor<1>,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    beta: f64,
    dpop: f64,
) -> PreferenceTerms {
    let chosen_rewards = (pi_chosen - ref_chosen) * beta;
    let rejected_rewards = (pi_rejected - ref_rejected) * beta;
    let mut z = chosen_rewards.clone() - rejected_rewards.clone();
    if dpop != 0.0 {
        // beta * max(0, -Δ_chosen) = max(0, -chosen_reward) for beta > 0.
        z = z - chosen_rewards.clone().neg().clamp_min(0.0) * dpop;
    }
    PreferenceTerms {
        loss: log_sigmoid(z.clone()).mean().neg(),
        z,
        chosen_rewards,
        rejected_rewards,
    }
}

/// The CLO objective and its parts.
#[derive(Debug, Clone)]
pub struct CloTerms {
    /// `lambda * loss_sft + (1 - lambda) * loss_cl`, `[1]`.
    pub loss: Tensor<1>,
    /// NLL of `y_tgt | x_tgt`, `[1]`.
    pub loss_sft: Tensor<1>,
    /// `-(1/N) sum_i [log sigmoid(z_en(i)) + log sigmoid(z_tgt(i))]`, `[1]`.
    pub loss_cl: Tensor<1>,
    /// English direction: prompt `x_en`, chosen `y_en`, rejected `y_tgt`.
    pub en: PreferenceTerms,
    /// Target direction: prompt `x_tgt`, chosen `y_tgt`, rejected `y_en`.
    pub tgt: PreferenceTerms,
}

/// CLO (method.md section 3) on a batch in the row layout of [`super::batch`].
///
/// # Shapes
/// - policy, reference: `[4N]` summed log-probs in the CLO row layout
/// - tgt_tokens: `[N]` response token counts of the target-chosen rows (for the token mean)
pub fn clo_loss(
    policy: Tensor<1>,
    reference: Tensor<1>,
    tgt_tokens: Tensor<1>,
    beta: f64,
    lambda: f64,
    reduction: NllReduction,
) -> CloTerms {
    clo_positive_loss(policy, reference, tgt_tokens, beta, lambda, reduction, 0.0)
}

/// [`clo_loss`] whose two preference terms are DPO-Positive ([`dpo_positive_loss`]) with
/// weight `dpop` (0: the paper's CLO).
pub fn clo_positive_loss(
    policy: Tensor<1>,
    reference: Tensor<1>,
    tgt_tokens: Tensor<1>,
    beta: f64,
    lambda: f64,
    reduction: NllReduction,
    dpop: f64,
) -> CloTerms {
    let [rows] = policy.dims();
    let n = rows / 4;
    let block = |t: &Tensor<1>, k: usize| t.clone().narrow(0, k * n, n);
    let en = dpo_positive_loss(
        block(&policy, 0),
        block(&policy, 1),
        block(&reference, 0),
        block(&reference, 1),
        beta,
        dpop,
    );
    let tgt = dpo_positive_loss(
        block(&policy, 2),
        block(&policy, 3),
        block(&reference, 2),
        block(&reference, 3),
        beta,
        dpop,
    );
    // Eq. 10: the two directions are added, not averaged.
    let loss_cl = en.loss.clone() + tgt.loss.clone();
    let loss_sft = nll(block(&policy, 2), tgt_tokens, reduction);
    CloTerms {
        loss: loss_sft.clone() * lambda + loss_cl.clone() * (1.0 - lambda),
        loss_sft,
        loss_cl,
        en,
        tgt,
    }
}
