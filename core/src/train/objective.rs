//! What a training step optimizes ([`Objective`]) and what it takes ([`MicroBatch`]): the types
//! the step (`step.rs`) and the multi-device reduce (`parallel.rs`) share.

use serde::{Deserialize, Serialize};

use super::config::{Method, RunConfig};
use super::loss::NllReduction;
use crate::infer::score::Pair;

/// What a step optimizes (method.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Objective {
    /// `lambda * NLL(y_tgt | x_tgt) + (1 - lambda) * (DPO_en + DPO_tgt)` on rows in the CLO
    /// layout of [`super::batch`] (4 blocks per quadruple).
    Clo {
        beta: f64,
        lambda: f64,
        reduction: NllReduction,
        /// DPO-Positive weight of the preference terms (0: the paper's CLO).
        dpop: f64,
    },
    /// Sigmoid DPO on rows `0..B` chosen, `B..2B` rejected (DPO-Positive with `dpop > 0`).
    Dpo { beta: f64, dpop: f64 },
    /// NLL of the responses (SFT, and pretraining on `(first token, rest)` rows).
    Sft { reduction: NllReduction },
}

impl Objective {
    /// Rows per example: the width of a micro-batch's block layout.
    pub fn rows_per_example(&self) -> usize {
        match self {
            Objective::Clo { .. } => 4,
            Objective::Dpo { .. } => 2,
            Objective::Sft { .. } => 1,
        }
    }

    /// Whether the objective compares against a frozen reference.
    pub fn needs_reference(&self) -> bool {
        !matches!(self, Objective::Sft { .. })
    }
}

/// One micro-batch: model rows in the objective's block layout (row `k * B + i` is block `k`
/// of example `i`), the reference log-prob of every row (empty for SFT), and for DPO the
/// direction of each pair (`true`: English prompt).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MicroBatch {
    pub rows: Vec<Pair>,
    pub reference: Vec<f32>,
    pub english: Vec<bool>,
}

impl MicroBatch {
    /// Prompt and response tokens of the rows.
    pub fn tokens(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.prompt.len() + r.response.len())
            .sum()
    }
}

/// The objective stage `stage` of a run with `config` trains.
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
