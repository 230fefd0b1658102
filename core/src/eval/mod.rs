//! Evaluation (method.md section 7): multiple choice by log-likelihood (BELEBELE style),
//! generation with language identification (fidelity, S-index, MMMLU-style answers).

pub mod charts;
pub mod generated;
pub mod judge;
pub mod lang;
pub mod langid;
pub mod mc;
pub mod report;
pub mod results;

pub use results::{EvalResults, ModelRef};

use serde::{Deserialize, Serialize};

/// Accuracy over `n` items with its standard error (sample standard deviation / sqrt(n), as
/// lm-evaluation-harness reports it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub stderr: f64,
}

impl Accuracy {
    pub fn from_outcomes(outcomes: impl IntoIterator<Item = bool>) -> Self {
        let v: Vec<f64> = outcomes.into_iter().map(|c| c as u8 as f64).collect();
        let n = v.len();
        let correct = v.iter().filter(|x| **x > 0.0).count();
        let mean = if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        };
        let stderr = if n < 2 {
            0.0
        } else {
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        };
        Accuracy {
            n,
            correct,
            accuracy: mean,
            stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy: x = [1, 0, 1, 1]; x.std(ddof=1) / sqrt(4) = 0.25
    #[test]
    fn stderr_is_the_sample_standard_error() {
        let a = Accuracy::from_outcomes([true, false, true, true]);
        assert_eq!((a.n, a.correct), (4, 3));
        assert!((a.accuracy - 0.75).abs() < 1e-12);
        assert!((a.stderr - 0.25).abs() < 1e-12, "{}", a.stderr);
    }
}
