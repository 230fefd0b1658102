//! The training examples of one stage, whatever the method: CLO quadruples, DPO preference
//! pairs or SFT pairs, with one way to turn a batch of them into model rows.

use super::batch::{
    PreferencePair, SftPairs, TokenizedQuad, clo_rows, dpo_pairs, dpo_rows, sft_pairs,
};
use super::config::Method;
use super::objective::MicroBatch;
use crate::infer::score::Pair;

/// The examples one stage trains on.
#[derive(Debug, Clone)]
pub enum Examples {
    /// CLO: whole quadruples (4 rows each).
    Clo(Vec<TokenizedQuad>),
    /// DPO: independent preference pairs (2 rows each); `english[i]` tells the direction.
    Dpo {
        pairs: Vec<PreferencePair>,
        english: Vec<bool>,
    },
    /// SFT: supervised pairs (1 row each).
    Sft(Vec<Pair>),
}

impl Examples {
    /// The examples of a single-objective `method` built from quadruples.
    pub fn for_method(method: Method, quads: &[TokenizedQuad], max_len: usize) -> Self {
        match method {
            Method::Clo => Examples::Clo(quads.to_vec()),
            Method::Dpo => {
                let pairs = dpo_pairs(quads);
                // `dpo_pairs` yields the English then the target direction of each quadruple.
                let english = (0..pairs.len()).map(|i| i % 2 == 0).collect();
                Examples::Dpo { pairs, english }
            }
            Method::Sft => Examples::Sft(sft_pairs(quads, SftPairs::Both, max_len)),
            Method::SftEng => Examples::Sft(sft_pairs(quads, SftPairs::English, max_len)),
            Method::SftTgt => Examples::Sft(sft_pairs(quads, SftPairs::Target, max_len)),
            Method::SftDpo => unreachable!("sft+dpo runs as two stages"),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Examples::Clo(q) => q.len(),
            Examples::Dpo { pairs, .. } => pairs.len(),
            Examples::Sft(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Examples::Clo(_) => "clo",
            Examples::Dpo { .. } => "dpo",
            Examples::Sft(_) => "sft",
        }
    }

    /// Rows per example, in blocks: row `k * B + i` is block `k` of the batch's example `i`.
    pub fn ref_width(&self) -> usize {
        match self {
            Examples::Clo(_) => 4,
            Examples::Dpo { .. } => 2,
            Examples::Sft(_) => 1,
        }
    }

    /// The model rows of the examples `idx`, in the block layout of [`Self::ref_width`].
    pub fn rows(&self, idx: &[usize], max_len: usize) -> Vec<Pair> {
        match self {
            Examples::Clo(q) => clo_rows(&idx.iter().map(|&i| &q[i]).collect::<Vec<_>>(), max_len),
            Examples::Dpo { pairs, .. } => {
                dpo_rows(&idx.iter().map(|&i| &pairs[i]).collect::<Vec<_>>(), max_len)
            }
            Examples::Sft(p) => idx.iter().map(|&i| p[i].clone()).collect(),
        }
    }

    /// The micro-batch of examples `idx`: their rows, the rows' reference log-probs from
    /// `refs` (`[example][block]`, in the same block layout; none when `refs` is empty) and, for
    /// DPO, each pair's direction.
    pub fn micro_batch(&self, idx: &[usize], refs: &[Vec<f32>], max_len: usize) -> MicroBatch {
        let width = self.ref_width();
        let reference = if refs.is_empty() {
            Vec::new()
        } else {
            (0..width)
                .flat_map(|k| idx.iter().map(move |&i| refs[i][k]))
                .collect()
        };
        let english = match self {
            Examples::Dpo { english, .. } => idx.iter().map(|&i| english[i]).collect(),
            _ => Vec::new(),
        };
        MicroBatch {
            rows: self.rows(idx, max_len),
            reference,
            english,
        }
    }
}
