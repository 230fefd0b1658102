//! From quadruples to the rows each method trains on.
//!
//! Every sequence is `tokens(template(prompt)) ++ tokens(response) ++ [eos]` (method.md
//! section 2), cut from the response end to `max_len`; a quadruple whose longer prompt alone
//! reaches `max_len` is dropped and counted.
//!
//! # Row layout of a CLO batch of N quadruples (4N rows, in blocks of N)
//!
//! | rows       | prompt  | response | role                 |
//! |------------|---------|----------|----------------------|
//! | `0..N`     | `x_en`  | `y_en`   | English chosen       |
//! | `N..2N`    | `x_en`  | `y_tgt`  | English rejected     |
//! | `2N..3N`   | `x_tgt` | `y_tgt`  | target chosen (+SFT) |
//! | `3N..4N`   | `x_tgt` | `y_en`   | target rejected      |
//!
//! Row `i` of each block comes from quadruple `i`, so both preference directions of every
//! quadruple are always in the same batch (what distinguishes CLO from DPO on augmented data).

use serde::{Deserialize, Serialize};

use super::data::Quadruple;
use crate::error::Result;
use crate::infer::score::Pair;
use crate::load::tokenizer::ChatTokenizer;

/// A quadruple as token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizedQuad {
    pub en_prompt: Vec<u32>,
    pub tgt_prompt: Vec<u32>,
    pub en_response: Vec<u32>,
    pub tgt_response: Vec<u32>,
}

impl TokenizedQuad {
    /// `(prompt, chosen, rejected)` of the English and the target direction.
    pub fn directions(&self) -> [(&[u32], &[u32], &[u32]); 2] {
        [
            (&self.en_prompt, &self.en_response, &self.tgt_response),
            (&self.tgt_prompt, &self.tgt_response, &self.en_response),
        ]
    }
}

/// Tokenizes quadruples with the chat template; returns the kept ones and how many were
/// dropped because a prompt alone reaches `max_len`.
pub fn tokenize_quads(
    tok: &ChatTokenizer,
    quads: &[Quadruple],
    max_len: usize,
) -> Result<(Vec<TokenizedQuad>, usize)> {
    let mut kept = Vec::with_capacity(quads.len());
    let mut dropped = 0;
    for q in quads {
        let t = TokenizedQuad {
            en_prompt: tok.prompt_ids(&q.x_en, true)?,
            tgt_prompt: tok.prompt_ids(&q.x_tgt, true)?,
            en_response: tok.response_ids(&q.y_en)?,
            tgt_response: tok.response_ids(&q.y_tgt)?,
        };
        if t.en_prompt.len().max(t.tgt_prompt.len()) >= max_len {
            tracing::debug!(id = %q.id, "prompt reaches max_len: quadruple dropped");
            dropped += 1;
        } else {
            kept.push(t);
        }
    }
    Ok((kept, dropped))
}

fn pair(prompt: &[u32], response: &[u32], max_len: usize) -> Pair {
    Pair {
        prompt: prompt.to_vec(),
        response: response.to_vec(),
    }
    .truncated(max_len)
}

/// Prompt and response of each block of the CLO layout, in row order (the module docs' table).
type Block = fn(&TokenizedQuad) -> (&[u32], &[u32]);

const CLO_LAYOUT: [Block; 4] = [
    |q| (&q.en_prompt, &q.en_response),
    |q| (&q.en_prompt, &q.tgt_response),
    |q| (&q.tgt_prompt, &q.tgt_response),
    |q| (&q.tgt_prompt, &q.en_response),
];

/// The 4N rows of a CLO (or reference) batch, in the layout of the module docs.
pub fn clo_rows(quads: &[&TokenizedQuad], max_len: usize) -> Vec<Pair> {
    CLO_LAYOUT
        .iter()
        .flat_map(|block| {
            quads.iter().map(move |q| {
                let (prompt, response) = block(q);
                pair(prompt, response, max_len)
            })
        })
        .collect()
}

/// One independent preference pair of DPO (either direction of a quadruple).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// The 2N independent pairs of `dpo` (method.md section 3): both directions of every quadruple,
/// to be shuffled on their own.
pub fn dpo_pairs(quads: &[TokenizedQuad]) -> Vec<PreferencePair> {
    quads
        .iter()
        .flat_map(|q| q.directions())
        .map(|(prompt, chosen, rejected)| PreferencePair {
            prompt: prompt.to_vec(),
            chosen: chosen.to_vec(),
            rejected: rejected.to_vec(),
        })
        .collect()
}

/// Rows of a DPO batch of B pairs: `0..B` chosen, `B..2B` rejected.
pub fn dpo_rows(pairs: &[&PreferencePair], max_len: usize) -> Vec<Pair> {
    let mut rows: Vec<Pair> = pairs
        .iter()
        .map(|p| pair(&p.prompt, &p.chosen, max_len))
        .collect();
    rows.extend(pairs.iter().map(|p| pair(&p.prompt, &p.rejected, max_len)));
    rows
}

/// Which supervised pairs an SFT method trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SftPairs {
    /// `(x_en, y_en)` and `(x_tgt, y_tgt)`.
    Both,
    English,
    Target,
}

/// The supervised pairs of `sft`, `sft-eng` or `sft-tgt`, cut to `max_len`.
pub fn sft_pairs(quads: &[TokenizedQuad], which: SftPairs, max_len: usize) -> Vec<Pair> {
    let mut out = Vec::new();
    for q in quads {
        if which != SftPairs::Target {
            out.push(pair(&q.en_prompt, &q.en_response, max_len));
        }
        if which != SftPairs::English {
            out.push(pair(&q.tgt_prompt, &q.tgt_response, max_len));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quad(k: u32) -> TokenizedQuad {
        TokenizedQuad {
            en_prompt: vec![k, 1],
            tgt_prompt: vec![k, 2],
            en_response: vec![k, 3, 3],
            tgt_response: vec![k, 4, 4, 4],
        }
    }

    #[test]
    fn both_directions_of_each_quadruple_share_the_batch_row_index() {
        let quads = [quad(10), quad(20), quad(30)];
        let refs: Vec<&TokenizedQuad> = quads.iter().collect();
        let rows = clo_rows(&refs, 100);
        let n = quads.len();
        assert_eq!(rows.len(), 4 * n);
        for (i, q) in quads.iter().enumerate() {
            assert_eq!(
                (&rows[i].prompt, &rows[i].response),
                (&q.en_prompt, &q.en_response)
            );
            assert_eq!(
                (&rows[n + i].prompt, &rows[n + i].response),
                (&q.en_prompt, &q.tgt_response)
            );
            assert_eq!(
                (&rows[2 * n + i].prompt, &rows[2 * n + i].response),
                (&q.tgt_prompt, &q.tgt_response)
            );
            assert_eq!(
                (&rows[3 * n + i].prompt, &rows[3 * n + i].response),
                (&q.tgt_prompt, &q.en_response)
            );
        }
    }

    #[test]
    fn responses_are_cut_to_max_len_for_every_method() {
        let q = quad(1);
        let rows = clo_rows(&[&q], 4);
        assert_eq!(rows[2].response, vec![1, 4]);
        let pairs = dpo_pairs(std::slice::from_ref(&q));
        let refs: Vec<&PreferencePair> = pairs.iter().collect();
        let all = [rows, dpo_rows(&refs, 4), sft_pairs(&[q], SftPairs::Both, 4)].concat();
        assert_eq!(all.len(), 4 + 4 + 2);
        assert!(
            all.iter().all(|r| r.prompt.len() + r.response.len() <= 4),
            "{all:?}"
        );
    }

    #[test]
    fn dpo_pairs_are_both_directions_and_sft_pairs_follow_the_variant() {
        let quads = [quad(1), quad(2)];
        let pairs = dpo_pairs(&quads);
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[1].prompt, quads[0].tgt_prompt);
        assert_eq!(pairs[1].chosen, quads[0].tgt_response);
        assert_eq!(pairs[1].rejected, quads[0].en_response);
        assert_eq!(sft_pairs(&quads, SftPairs::Both, 100).len(), 4);
        assert!(
            sft_pairs(&quads, SftPairs::Target, 100)
                .iter()
                .all(|p| p.prompt[1] == 2)
        );
        assert!(
            sft_pairs(&quads, SftPairs::English, 100)
                .iter()
                .all(|p| p.prompt[1] == 1)
        );
    }
}
