//! The line training writes to `RUN/metrics.jsonl` for every optimizer step, which the server
//! streams and the UI charts (re-exported as `api::StepMetrics`).

use serde::{Deserialize, Serialize};

use super::step::StepReport;

/// One line of `RUN/metrics.jsonl`: one optimizer step. Losses, rewards and the grad norm are
/// those of the step's batch under the weights *before* the step's update (so step 0 is the
/// untouched model). Fields that do not apply to the method are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Global optimizer step (0-based, continues across the stages of `sft+dpo`).
    pub step: usize,
    /// The stage's objective: clo, sft, sft-eng, sft-tgt or dpo.
    pub stage: String,
    pub epoch: usize,
    pub loss: f64,
    /// NLL term (clo: target responses only; sft variants: the loss itself).
    pub loss_sft: Option<f64>,
    /// Preference term (clo: eq. 10 sum of both directions; dpo: the DPO loss).
    pub loss_cl: Option<f64>,
    pub reward_en_chosen: Option<f64>,
    pub reward_en_rejected: Option<f64>,
    pub reward_tgt_chosen: Option<f64>,
    pub reward_tgt_rejected: Option<f64>,
    pub margin_en: Option<f64>,
    pub margin_tgt: Option<f64>,
    pub acc_en: Option<f64>,
    pub acc_tgt: Option<f64>,
    /// Global L2 norm of the (accumulated) gradients before clipping.
    pub grad_norm: f64,
    /// Learning rate of this step's update.
    pub lr: f64,
    /// Non-padding tokens forwarded (and back-propagated) per second in this step.
    pub tokens_per_s: f64,
    pub tokens: usize,
    /// Validation loss after this step's update, on the steps that validate.
    pub val_loss: Option<f64>,
    /// Peak memory so far, in bytes: the largest device allocator's reserved bytes on GPUs
    /// (wgpu), the process's peak resident set on the CPU (Linux); null where unknown. Absent
    /// from runs written before it existed.
    #[serde(default)]
    pub peak_mem_bytes: Option<u64>,
}

impl StepMetrics {
    /// The line of a step: its report, learning rate and duration; no validation, no memory.
    pub fn of_step(
        step: usize,
        stage: &str,
        epoch: usize,
        report: &StepReport,
        lr: f64,
        seconds: f64,
    ) -> Self {
        let [en_c, en_r, en_m, en_a] = report.direction(true);
        let [tg_c, tg_r, tg_m, tg_a] = report.direction(false);
        StepMetrics {
            step,
            stage: stage.into(),
            epoch,
            loss: report.loss,
            loss_sft: report.loss_sft,
            loss_cl: report.loss_cl,
            reward_en_chosen: en_c,
            reward_en_rejected: en_r,
            reward_tgt_chosen: tg_c,
            reward_tgt_rejected: tg_r,
            margin_en: en_m,
            margin_tgt: tg_m,
            acc_en: en_a,
            acc_tgt: tg_a,
            grad_norm: report.grad_norm,
            lr,
            tokens_per_s: report.tokens as f64 / seconds.max(1e-9),
            tokens: report.tokens,
            val_loss: None,
            peak_mem_bytes: None,
        }
    }
}
