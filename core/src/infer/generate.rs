//! Autoregressive generation with a KV cache: greedy (temperature 0) or sampling with
//! temperature and nucleus (top-p), seeded; stops on EOS or after `max_new_tokens`.

use std::ops::ControlFlow;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::load::models::{CausalLm, KvCache};

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Sample only from the smallest set of tokens whose probabilities reach `top_p`.
    pub top_p: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
}

impl Default for SamplingConfig {
    /// The paper's generation defaults (method.md section 7).
    fn default() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.9,
            seed: 0,
            max_new_tokens: 256,
        }
    }
}

impl SamplingConfig {
    /// The settings of an OpenAI chat request: omitted ones take the paper's defaults, the seed
    /// 0 and 256 new tokens; checked by [`Self::validate`].
    pub fn from_request(
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
        max_tokens: Option<usize>,
    ) -> crate::Result<Self> {
        let d = Self::default();
        let c = Self {
            temperature: temperature.unwrap_or(d.temperature),
            top_p: top_p.unwrap_or(d.top_p),
            seed: seed.unwrap_or(0),
            max_new_tokens: max_tokens.unwrap_or(256),
        };
        c.validate()?;
        Ok(c)
    }

    /// Refuses settings that cannot sample, naming the field: the same rules for the CLI, the
    /// API and evaluation.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: String| Err(crate::CoreError::Invalid(m));
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return bad(format!(
                "temperature {}: must be a number in [0, 2] (0 is greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {}: must be in (0, 1]", self.top_p));
        }
        crate::limits::NEW_TOKENS.check("sampling settings", self.max_new_tokens)?;
        Ok(())
    }
}

/// Checks that a prompt of `prompt_tokens` fits: below the model's `context` (room for one new
/// token at least) and within `max_prompt_tokens` when set. Returns `max_new_tokens` capped so
/// that prompt and answer stay within the context. `what` names the prompt in the error (a
/// file:line, a request field).
pub fn fit_to_context(
    what: &str,
    prompt_tokens: usize,
    max_new_tokens: usize,
    context: usize,
    max_prompt_tokens: Option<usize>,
) -> crate::Result<usize> {
    let by_context = context.saturating_sub(1);
    let (limit, why) = match max_prompt_tokens {
        Some(m) if m < by_context => (m, format!("max_prompt_tokens is {m}")),
        _ => (
            by_context,
            format!(
                "the model's context is {context} tokens (max_position_embeddings), one kept for the answer"
            ),
        ),
    };
    if prompt_tokens > limit {
        return Err(crate::CoreError::TooLong {
            what: what.to_string(),
            tokens: prompt_tokens,
            limit,
            why,
            hint: "shorten the prompt (or the conversation)",
        });
    }
    Ok(max_new_tokens.min(context - prompt_tokens))
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxNewTokens,
    /// The caller asked to stop (for example, its client went away).
    Cancelled,
}

impl StopReason {
    /// OpenAI's `finish_reason` for it.
    pub fn finish_reason(self) -> &'static str {
        match self {
            StopReason::Eos => "stop",
            StopReason::MaxNewTokens => "length",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// Text of a generation as it streams: each new token's ids are decoded with all before them,
/// and only complete characters go out (a character split across tokens waits for its last
/// byte), so the pieces always add up to the whole answer.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    sent: String,
}

impl TextStream {
    /// Takes the next generated id; the new text it completes, if any.
    pub fn push(
        &mut self,
        tokenizer: &crate::load::tokenizer::ChatTokenizer,
        id: u32,
    ) -> Option<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, true).unwrap_or_default();
        self.take(text, true)
    }

    /// The whole answer `ids`, and what of it was held back (bytes that never completed a
    /// character) and must still go out.
    pub fn finish(
        &mut self,
        tokenizer: &crate::load::tokenizer::ChatTokenizer,
        ids: &[u32],
    ) -> (String, Option<String>) {
        let text = tokenizer.decode(ids, true).unwrap_or_default();
        let rest = self.take(text.clone(), false);
        (text, rest)
    }

    fn take(&mut self, text: String, hold_partial: bool) -> Option<String> {
        let partial = hold_partial && text.ends_with('\u{FFFD}');
        if text.len() > self.sent.len() && !partial && text.starts_with(&self.sent) {
            let piece = text[self.sent.len()..].to_string();
            self.sent = text;
            Some(piece)
        } else {
            None
        }
    }
}

/// Generated token ids (EOS excluded) and why generation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub stop: StopReason,
}

/// Continues `prompt` token by token; `on_token` sees each new token as it is chosen.
pub fn generate(
    model: &CausalLm,
    prompt: &[u32],
    eos_ids: &[u32],
    config: &SamplingConfig,
    device: &Device,
    mut on_token: impl FnMut(u32),
) -> Generation {
    generate_until(model, prompt, eos_ids, config, device, |t| {
        on_token(t);
        ControlFlow::Continue(())
    })
}

/// [`generate`], stopping early (with [`StopReason::Cancelled`]) when `on_token` breaks.
pub fn generate_until(
    model: &CausalLm,
    prompt: &[u32],
    eos_ids: &[u32],
    config: &SamplingConfig,
    device: &Device,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Generation {
    let prompts = [prompt.to_vec()];
    let configs = [config.clone()];
    let mut out = generate_batch_until(model, &prompts, eos_ids, &configs, device, |_, t| {
        on_token(t)
    });
    out.pop().unwrap_or(Generation {
        ids: Vec::new(),
        stop: StopReason::MaxNewTokens,
    })
}

/// Continues several prompts at once: they are left-padded to one length and decoded together
/// with one KV cache. Row `i` samples with `configs[i]` (its own seeded RNG), so a row's output
/// does not depend on which other rows share its batch. `on_token(row, id)` sees each new token.
pub fn generate_batch(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    eos_ids: &[u32],
    configs: &[SamplingConfig],
    device: &Device,
    mut on_token: impl FnMut(usize, u32),
) -> Vec<Generation> {
    generate_batch_until(model, prompts, eos_ids, configs, device, |row, t| {
        on_token(row, t);
        ControlFlow::Continue(())
    })
}

/// [`generate_batch`], stopping every row (with [`StopReason::Cancelled`]) when `on_token`
/// breaks.
pub fn generate_batch_until(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    eos_ids: &[u32],
    configs: &[SamplingConfig],
    device: &Device,
    mut on_token: impl FnMut(usize, u32) -> ControlFlow<()>,
) -> Vec<Generation> {
    let mut decoder = BatchDecoder::new(model, prompts, eos_ids, configs, device);
    while let Some(read) = decoder.forward() {
        decoder.advance(read.into_data(), &mut on_token);
    }
    decoder.finish()
}

/// [`generate_until`] with awaited read-backs: what the browser needs, where a blocking GPU
/// read panics. One id (greedy) or one row of logits (sampling) comes back per token.
pub async fn generate_async(
    model: &CausalLm,
    prompt: &[u32],
    eos_ids: &[u32],
    config: &SamplingConfig,
    device: &Device,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> crate::Result<Generation> {
    let prompts = [prompt.to_vec()];
    let configs = [config.clone()];
    let mut decoder = BatchDecoder::new(model, &prompts, eos_ids, &configs, device);
    while let Some(read) = decoder.forward() {
        let data = read.into_data_async().await?;
        decoder.advance(data, |_, t| on_token(t));
    }
    Ok(decoder.finish().pop().unwrap_or(Generation {
        ids: Vec::new(),
        stop: StopReason::MaxNewTokens,
    }))
}

/// What a decoding step reads back: the argmax id of each row (greedy) or each row's logits.
pub enum Readback {
    Ids(Tensor<1, Int>),
    Logits(Tensor<1>),
}

impl Readback {
    /// Blocking read.
    pub fn into_data(self) -> TensorData {
        match self {
            Readback::Ids(t) => t.into_data(),
            Readback::Logits(t) => t.into_data(),
        }
    }

    /// Awaited read.
    pub async fn into_data_async(self) -> crate::Result<TensorData> {
        let data = match self {
            Readback::Ids(t) => t.into_data_async().await,
            Readback::Logits(t) => t.into_data_async().await,
        };
        data.map_err(|e| {
            crate::CoreError::Internal(format!("reading generated tokens back: {e:?}"))
        })
    }
}

/// Decoding of several prompts as steps: [`Self::forward`] runs the model for one new token of
/// every row and returns what to read back; [`Self::advance`] takes those values, chooses the
/// tokens and feeds them back. The prompts are left-padded to one length and decoded together
/// with one KV cache; row `i` samples with `configs[i]` (its own seeded RNG), so a row's output
/// does not depend on which other rows share its batch. The caller reads, blocking or awaited.
pub struct BatchDecoder<'a> {
    model: &'a CausalLm,
    device: Device,
    eos_ids: Vec<u32>,
    configs: Vec<SamplingConfig>,
    fill: i64,
    input: Vec<i64>,
    len: usize,
    cache: KvCache,
    rngs: Vec<StdRng>,
    out: Vec<Option<Generation>>,
    ids: Vec<Vec<u32>>,
    steps_left: usize,
    /// Greedy rows need only the argmax: it is taken on the device, and one id per row comes
    /// back instead of a row of logits.
    greedy: bool,
    vocab: usize,
}

impl<'a> BatchDecoder<'a> {
    pub fn new(
        model: &'a CausalLm,
        prompts: &[Vec<u32>],
        eos_ids: &[u32],
        configs: &[SamplingConfig],
        device: &Device,
    ) -> Self {
        assert_eq!(
            prompts.len(),
            configs.len(),
            "one sampling config per prompt"
        );
        let rows = prompts.len();
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let fill = eos_ids.first().copied().unwrap_or(0) as i64;
        let padding: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let mut input: Vec<i64> = Vec::with_capacity(rows * width);
        for p in prompts {
            input.extend(std::iter::repeat_n(fill, width - p.len()));
            input.extend(p.iter().map(|&t| t as i64));
        }
        Self {
            model,
            device: device.clone(),
            eos_ids: eos_ids.to_vec(),
            configs: configs.to_vec(),
            fill,
            input,
            len: width,
            cache: KvCache::with_left_padding(model.model.layers.len(), padding),
            rngs: configs
                .iter()
                .map(|c| StdRng::seed_from_u64(c.seed))
                .collect(),
            out: configs
                .iter()
                .map(|c| {
                    (c.max_new_tokens == 0).then_some(Generation {
                        ids: Vec::new(),
                        stop: StopReason::MaxNewTokens,
                    })
                })
                .collect(),
            ids: vec![Vec::new(); rows],
            steps_left: configs.iter().map(|c| c.max_new_tokens).max().unwrap_or(0),
            greedy: configs.iter().all(|c| c.temperature <= 0.0),
            vocab: 0,
        }
    }

    /// Runs the model for the next token of every row; `None` once every row is done.
    pub fn forward(&mut self) -> Option<Readback> {
        let rows = self.configs.len();
        if rows == 0 || self.steps_left == 0 || self.out.iter().all(Option::is_some) {
            return None;
        }
        self.steps_left -= 1;
        let input = std::mem::take(&mut self.input);
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(input, [rows, self.len]), &self.device);
        let hidden = self.model.hidden_states(tokens, Some(&mut self.cache)); // [rows, len, hidden]
        // Only the last position's logits are needed (the prompt's others are not).
        let logits = self
            .model
            .logits(hidden.slice(s![.., self.len - 1..self.len, ..])); // [rows, 1, vocab]
        let [_, _, vocab] = logits.dims();
        self.vocab = vocab;
        let logits = logits.reshape([rows, vocab]);
        Some(if self.greedy {
            Readback::Ids(logits.argmax(1).reshape([rows]))
        } else {
            Readback::Logits(logits.reshape([rows * vocab]))
        })
    }

    /// Chooses each row's token from what [`Self::forward`] returned (read back), tells
    /// `on_token`, and prepares the next step's input.
    pub fn advance(
        &mut self,
        data: TensorData,
        mut on_token: impl FnMut(usize, u32) -> ControlFlow<()>,
    ) {
        let rows = self.configs.len();
        let vocab = self.vocab;
        let (argmax, last): (Vec<i64>, Vec<f32>) = if self.greedy {
            (data.try_into_vec_as().expect("int ids"), Vec::new())
        } else {
            (Vec::new(), data.try_into_vec_as().expect("f32 logits"))
        };
        let mut input = Vec::with_capacity(rows);
        for row in 0..rows {
            if self.out[row].is_some() {
                input.push(self.fill);
                continue;
            }
            let next = if self.greedy {
                argmax[row] as u32
            } else {
                choose(
                    &last[row * vocab..(row + 1) * vocab],
                    &self.configs[row],
                    &mut self.rngs[row],
                )
            };
            if self.eos_ids.contains(&next) {
                self.out[row] = Some(Generation {
                    ids: std::mem::take(&mut self.ids[row]),
                    stop: StopReason::Eos,
                });
                input.push(self.fill);
                continue;
            }
            let flow = on_token(row, next);
            self.ids[row].push(next);
            if flow.is_break() {
                for (r, done) in self.out.iter_mut().enumerate() {
                    if done.is_none() {
                        *done = Some(Generation {
                            ids: std::mem::take(&mut self.ids[r]),
                            stop: StopReason::Cancelled,
                        });
                    }
                }
                break;
            }
            if self.ids[row].len() >= self.configs[row].max_new_tokens {
                self.out[row] = Some(Generation {
                    ids: std::mem::take(&mut self.ids[row]),
                    stop: StopReason::MaxNewTokens,
                });
            }
            input.push(next as i64);
        }
        self.input = input;
        self.len = 1;
    }

    /// Every row's generation.
    pub fn finish(self) -> Vec<Generation> {
        (self.out.into_iter().zip(self.ids))
            .map(|(done, ids)| {
                done.unwrap_or(Generation {
                    ids,
                    stop: StopReason::MaxNewTokens,
                })
            })
            .collect()
    }
}

/// Picks the next token from one row of logits.
pub fn choose(logits: &[f32], config: &SamplingConfig, rng: &mut impl Rng) -> u32 {
    if config.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / config.temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // Nucleus: the smallest prefix whose mass reaches top_p (always at least one token).
    let mut mass = 0.0;
    let mut keep = 0;
    for (_, p) in &probs {
        mass += p;
        keep += 1;
        if mass >= config.top_p {
            break;
        }
    }
    let kept = &probs[..keep];
    let mut r = rng.random::<f64>() * mass;
    for (id, p) in kept {
        r -= p;
        if r <= 0.0 {
            return *id;
        }
    }
    kept[keep - 1].0
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f64, top_p: f64) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_p,
            seed: 7,
            max_new_tokens: 1,
        }
    }

    #[test]
    fn prompts_are_fitted_to_the_context() {
        assert_eq!(fit_to_context("p", 10, 100, 64, None).unwrap(), 54);
        assert_eq!(fit_to_context("p", 63, 100, 64, None).unwrap(), 1);
        let err = fit_to_context("prompt", 64, 1, 64, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 tokens exceed the limit of 63"), "{err}");
        let err = fit_to_context("prompt", 20, 1, 64, Some(16))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limit of 16") && err.contains("max_prompt_tokens"),
            "{err}"
        );
    }

    #[test]
    fn sampling_settings_are_checked() {
        assert!(cfg(0.0, 1.0).validate().is_ok());
        for bad in [
            cfg(f64::NAN, 0.9),
            cfg(-1.0, 0.9),
            cfg(0.5, 0.0),
            cfg(0.5, f64::NAN),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(choose(&[0.1, 2.0, 2.0, -1.0], &cfg(0.0, 1.0), &mut rng), 1);
    }

    #[test]
    fn top_p_never_samples_outside_the_nucleus() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.8 keeps the first two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[choose(&logits, &cfg(1.0, 0.8), &mut rng) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        // Renormalised nucleus: 0.665 / 0.245 -> about 73% / 27%.
        let share = seen[0] as f64 / 2000.0;
        assert!((share - 0.731).abs() < 0.04, "{seen:?}");
    }

    #[test]
    fn same_seed_same_choices() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| choose(&logits, &cfg(0.8, 0.95), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
