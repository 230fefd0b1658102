//! Log-probabilities of responses given prompts (`method.md` section 2): summed over response
//! tokens, prompt and padding masked out.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::load::models::CausalLm;

/// Per-token and summed log-probabilities of `labels` under `logits`, counting only positions
/// where `mask` is 1. Logits at position t must already predict `labels[t]` (shifted by the
/// caller).
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`; labels: `[batch, seq]`; mask: `[batch, seq]` (0./1.)
/// - output: (`[batch]` sums, `[batch, seq]` masked per-token log-probs)
pub fn sequence_logps(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    mask: Tensor<2>,
) -> (Tensor<1>, Tensor<2>) {
    let [batch, seq, vocab] = logits.dims();
    // log p(label) = logit(label) - logsumexp(logits), one fused operation (clo-shaders): under
    // autodiff it keeps only the logits and a [rows] log-sum-exp for its backward, never a
    // [batch, seq, vocab] softmax or log-softmax.
    let per_token = clo_shaders::token_logps(
        logits.reshape([batch * seq, vocab]),
        labels.reshape([batch * seq]),
    )
    .reshape([batch, seq])
        * mask;
    (per_token.clone().sum_dim(1).reshape([batch]), per_token)
}

/// The score of one response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// log p(response | prompt), summed over response tokens.
    pub logp: f64,
    /// Number of response tokens scored.
    pub n_tokens: usize,
    /// log p of each response token.
    pub token_logps: Vec<f64>,
}

/// A prompt and a response, as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
}

impl Pair {
    /// Cuts the response so that prompt + response fit in `max_len` tokens (method.md: truncate
    /// from the response end). The prompt must already be shorter than `max_len`.
    pub fn truncated(mut self, max_len: usize) -> Self {
        let room = max_len.saturating_sub(self.prompt.len());
        self.response.truncate(room);
        self
    }
}

/// Pairs as right-padded model inputs, shifted so that position t predicts `labels[t]`.
#[derive(Debug, Clone)]
pub struct Collated {
    /// `[rows, width]`: prompt ++ response without its last token, then padding.
    pub inputs: Tensor<2, Int>,
    /// `[rows, width]`: the next token at each position.
    pub labels: Tensor<2, Int>,
    /// `[rows, width]`: 1 where the label is a response token, else 0.
    pub mask: Tensor<2>,
    /// Response tokens per row.
    pub n_tokens: Vec<usize>,
}

/// Builds one right-padded batch. Every pair needs at least one prompt token (the first
/// response token is predicted from the last prompt token).
pub fn collate(pairs: &[Pair], device: &Device) -> Collated {
    let batch = pairs.len();
    let width = pairs
        .iter()
        .map(|p| (p.prompt.len() + p.response.len()).saturating_sub(1))
        .max()
        .unwrap_or(0)
        .max(1);
    let (mut inputs, mut labels, mut mask) = (
        vec![0i64; batch * width],
        vec![0i64; batch * width],
        vec![0f32; batch * width],
    );
    for (b, pair) in pairs.iter().enumerate() {
        let ids: Vec<u32> = pair.prompt.iter().chain(&pair.response).copied().collect();
        for t in 0..ids.len().saturating_sub(1) {
            inputs[b * width + t] = ids[t] as i64;
            labels[b * width + t] = ids[t + 1] as i64;
            mask[b * width + t] = if t + 1 >= pair.prompt.len() { 1.0 } else { 0.0 };
        }
    }
    Collated {
        inputs: Tensor::from_data(TensorData::new(inputs, [batch, width]), device),
        labels: Tensor::from_data(TensorData::new(labels, [batch, width]), device),
        mask: Tensor::from_data(TensorData::new(mask, [batch, width]), device),
        n_tokens: pairs.iter().map(|p| p.response.len()).collect(),
    }
}

/// Logits elements a log-prob pass without gradients holds at once (256 MiB of f32): past it,
/// the positions go through the output layer in chunks.
pub const LOGITS_BUDGET: usize = 1 << 26;

/// Summed and per-token response log-probs of a collated batch under `model`.
///
/// Without autodiff (reference log-probs, validation, `clo score`, the browser's `clo.score`)
/// the `[rows, width, vocab]` logits are formed a chunk of positions at a time when they would
/// pass [`LOGITS_BUDGET`] elements: the same numbers, at most that much memory for them.
///
/// # Shapes
/// - output: (`[rows]`, `[rows, width]`)
pub fn batch_logps(model: &CausalLm, batch: &Collated) -> (Tensor<1>, Tensor<2>) {
    batch_logps_within(model, batch, LOGITS_BUDGET)
}

/// [`batch_logps`] with a budget of `max_elements` logits elements at once (when there is no
/// autodiff to keep them for).
pub fn batch_logps_within(
    model: &CausalLm,
    batch: &Collated,
    max_elements: usize,
) -> (Tensor<1>, Tensor<2>) {
    let [rows, width] = batch.inputs.dims();
    let vocab = model.vocab_size();
    if batch.inputs.device().is_autodiff() || rows * width * vocab <= max_elements {
        let logits = model.forward(batch.inputs.clone(), None); // [rows, width, vocab]
        return sequence_logps(logits, batch.labels.clone(), batch.mask.clone());
    }
    let chunk = (max_elements / (rows * vocab).max(1)).max(1);
    let hidden = model.hidden_states(batch.inputs.clone(), None); // [rows, width, hidden]
    let per_token = chunked_logps(model, &hidden, batch, chunk);
    (per_token.clone().sum_dim(1).reshape([rows]), per_token)
}

/// Masked per-token log-probs `[rows, len]` of positions `start..start + len` of `batch`, from
/// `hidden`, the decoder's hidden states at those positions (`[rows, len, hidden]`).
pub fn position_logps(
    model: &CausalLm,
    hidden: Tensor<3>,
    batch: &Collated,
    start: usize,
    len: usize,
) -> Tensor<2> {
    sequence_logps(
        model.logits(hidden),
        batch.labels.clone().narrow(1, start, len),
        batch.mask.clone().narrow(1, start, len),
    )
    .1
}

/// Masked per-token log-probs `[rows, width]` of `batch` from its hidden states
/// (`[rows, width, hidden]`), through the output layer `chunk` positions at a time.
pub fn chunked_logps(
    model: &CausalLm,
    hidden: &Tensor<3>,
    batch: &Collated,
    chunk: usize,
) -> Tensor<2> {
    let [_, width, _] = hidden.dims();
    let chunk = chunk.max(1);
    let parts: Vec<Tensor<2>> = (0..width)
        .step_by(chunk)
        .map(|start| {
            let len = chunk.min(width - start);
            position_logps(
                model,
                hidden.clone().narrow(1, start, len),
                batch,
                start,
                len,
            )
        })
        .collect();
    Tensor::cat(parts, 1)
}

/// Scores pairs in one right-padded batch.
///
/// # Panics
/// If a pair has an empty prompt (callers validate input; `clo score` reports the line).
pub fn score_batch(model: &CausalLm, pairs: &[Pair], device: &Device) -> Vec<Score> {
    let Some((width, per_token)) = per_token_logps(model, pairs, device) else {
        return Vec::new();
    };
    let values: Vec<f32> = per_token
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 log-probs");
    scores_of(pairs, width, &values)
}

/// [`score_batch`] with an awaited read (the browser, where a blocking read panics).
pub async fn score_batch_async(
    model: &CausalLm,
    pairs: &[Pair],
    device: &Device,
) -> crate::Result<Vec<Score>> {
    let Some((width, per_token)) = per_token_logps(model, pairs, device) else {
        return Ok(Vec::new());
    };
    let values: Vec<f32> = per_token
        .into_data_async()
        .await
        .map_err(|e| crate::CoreError::Internal(format!("reading log-probs: {e:?}")))?
        .try_into_vec_as::<f32>()
        .map_err(|e| crate::CoreError::Invalid(format!("log-probs: {e:?}")))?;
    Ok(scores_of(pairs, width, &values))
}

/// The batch's width and its `[rows, width]` per-token log-probs (`None`: no pairs).
fn per_token_logps(
    model: &CausalLm,
    pairs: &[Pair],
    device: &Device,
) -> Option<(usize, Tensor<2>)> {
    assert!(
        pairs.iter().all(|p| !p.prompt.is_empty()),
        "score_batch needs a prompt token before each response"
    );
    if pairs.is_empty() {
        return None;
    }
    let batch = collate(pairs, device);
    let width = batch.inputs.dims()[1];
    Some((width, batch_logps(model, &batch).1))
}

fn scores_of(pairs: &[Pair], width: usize, values: &[f32]) -> Vec<Score> {
    pairs
        .iter()
        .enumerate()
        .map(|(b, pair)| {
            let start = b * width + pair.prompt.len() - 1;
            let token_logps: Vec<f64> = values[start..start + pair.response.len()]
                .iter()
                .map(|v| *v as f64)
                .collect();
            Score {
                logp: token_logps.iter().sum(),
                n_tokens: token_logps.len(),
                token_logps,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers from PyTorch:
    /// ```python
    /// import torch
    /// logits = torch.tensor([[[1., 2., 3.], [0., 0., 0.], [3., 1., -1.]]])
    /// labels = torch.tensor([[2, 0, 1]]); mask = torch.tensor([[0., 1., 1.]])
    /// lp = torch.log_softmax(logits, -1).gather(2, labels[..., None])[..., 0] * mask
    /// print(lp.tolist(), lp.sum(-1).tolist())
    /// # [[-0.0, -1.0986123085021973, -2.1429316997528076]] [-3.241544008255005]
    /// ```
    /// Past the logits budget, the positions go through the output layer in chunks: the same
    /// per-token and summed log-probs (chunks of 1 and of 3 positions, rows of unequal length).
    #[test]
    fn chunked_logits_give_the_same_log_probs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let device = Device::flex();
        let lm = crate::Pretrained::load(&root.join("models/qwen2"), &device).unwrap();
        let pairs: Vec<Pair> = (0..3u32)
            .map(|r| Pair {
                prompt: vec![5 + r, 17, 42],
                response: (0..4 + 2 * r).map(|t| (r * 31 + t * 7) % 300).collect(),
            })
            .collect();
        let batch = collate(&pairs, &device);
        let values = |(sums, per): (Tensor<1>, Tensor<2>)| -> (Vec<f32>, Vec<f32>) {
            (
                sums.into_data().try_into_vec_as().unwrap(),
                per.into_data().try_into_vec_as().unwrap(),
            )
        };
        let whole = values(batch_logps_within(&lm.model, &batch, usize::MAX));
        let [rows, _] = batch.inputs.dims();
        let vocab = lm.model.vocab_size();
        assert_eq!(vocab, 316);
        for chunk in [1, 3] {
            let got = values(batch_logps_within(&lm.model, &batch, chunk * rows * vocab));
            for (a, b) in whole.0.iter().zip(&got.0).chain(whole.1.iter().zip(&got.1)) {
                assert!((a - b).abs() < 1e-5, "chunk {chunk}: {a} vs {b}");
            }
            assert_eq!(whole.1.len(), got.1.len());
        }
        assert!(whole.0.iter().all(|v| *v < -1.0), "{:?}", whole.0);
    }

    #[test]
    fn sequence_logps_matches_pytorch() {
        let device = Device::flex();
        let logits =
            Tensor::<3>::from_floats([[[1., 2., 3.], [0., 0., 0.], [3., 1., -1.]]], &device);
        let labels = Tensor::<2, Int>::from_ints([[2, 0, 1]], &device);
        let mask = Tensor::<2>::from_floats([[0., 1., 1.]], &device);
        let (sum, per_token) = sequence_logps(logits, labels, mask);
        let sum: Vec<f32> = sum.into_data().try_into_vec_as::<f32>().unwrap();
        let per: Vec<f32> = per_token.into_data().try_into_vec_as::<f32>().unwrap();
        assert!((sum[0] + 3.241544).abs() < 1e-5, "{sum:?}");
        for (got, want) in per.iter().zip([0.0, -1.0986123, -2.1429317]) {
            assert!((got - want).abs() < 1e-5, "{per:?}");
        }
    }
}

/// One line of a `clo score` input: text, or token ids as they are.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ScoreRecord {
    Text {
        prompt: String,
        response: String,
    },
    Ids {
        prompt_ids: Vec<u32>,
        response_ids: Vec<u32>,
    },
}

impl ScoreRecord {
    /// The record as token ids (`chat`: a text prompt in the chat template; a text response
    /// gets EOS). Ids outside the vocabulary and an empty prompt are `CoreError::Invalid`.
    pub fn to_pair(
        &self,
        tokenizer: &crate::load::tokenizer::ChatTokenizer,
        chat: bool,
        vocab: usize,
    ) -> crate::Result<Pair> {
        let pair = match self {
            ScoreRecord::Text { prompt, response } => Pair {
                prompt: tokenizer.prompt_ids(prompt, chat)?,
                response: tokenizer.response_ids(response)?,
            },
            ScoreRecord::Ids {
                prompt_ids,
                response_ids,
            } => {
                if let Some(id) = prompt_ids
                    .iter()
                    .chain(response_ids)
                    .find(|id| **id as usize >= vocab)
                {
                    return Err(crate::CoreError::Invalid(format!(
                        "token id {id} is outside the vocabulary of {vocab}"
                    )));
                }
                Pair {
                    prompt: prompt_ids.clone(),
                    response: response_ids.clone(),
                }
            }
        };
        if pair.prompt.is_empty() {
            return Err(crate::CoreError::Invalid(
                "empty prompt: the first response token needs a token before it".into(),
            ));
        }
        Ok(pair)
    }
}

/// Reads a `clo score` input file: one JSON object per line, blank lines skipped.
/// Returns the records with their line numbers.
pub fn read_score_input(path: &std::path::Path) -> crate::Result<Vec<(usize, ScoreRecord)>> {
    use crate::CoreError;
    let mut lines = crate::data::jsonl::Lines::open(path, "score input")?;
    let mut records = Vec::new();
    while let Some(next) = lines.next_line() {
        let (n, line) = next?;
        if line.trim().is_empty() {
            continue;
        }
        let record: ScoreRecord = serde_json::from_str(line).map_err(|e| CoreError::Input {
            path: path.to_path_buf(),
            line: n,
            message: if e.is_data() || e.to_string().contains("did not match any variant") {
                "expected {\"prompt\": str, \"response\": str} or {\"prompt_ids\": [int], \"response_ids\": [int]}".into()
            } else {
                e.to_string()
            },
            hint: "each line is one JSON object: {\"prompt\", \"response\"} or {\"prompt_ids\", \"response_ids\"}",
        })?;
        records.push((n, record));
    }
    if records.is_empty() {
        return Err(CoreError::Input {
            path: path.to_path_buf(),
            line: 1,
            message: "no records".into(),
            hint: "the file is empty; write one JSON object per line",
        });
    }
    Ok(records)
}
