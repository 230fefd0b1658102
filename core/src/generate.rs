//! Autoregressive generation with a KV cache: greedy (temperature 0) or sampling with
//! temperature and nucleus (top-p), seeded; stops on EOS or after `max_new_tokens`.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::models::{CausalLm, KvCache, RopeConfig};

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

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxNewTokens,
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
    rope: &RopeConfig,
    prompt: &[u32],
    eos_ids: &[u32],
    config: &SamplingConfig,
    device: &Device,
    mut on_token: impl FnMut(u32),
) -> Generation {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut cache = KvCache::new(model.model.layers.len());
    let mut input: Vec<u32> = prompt.to_vec();
    let mut ids = Vec::new();
    for _ in 0..config.max_new_tokens {
        let len = input.len();
        let data: Vec<i64> = input.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(data, [1, len]), device);
        let logits = model.forward(tokens, rope, Some(&mut cache)); // [1, len, vocab]
        let [_, _, vocab] = logits.dims();
        let last: Vec<f32> = logits
            .slice(s![.., len - 1..len, ..])
            .reshape([vocab])
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 logits");
        let next = choose(&last, config, &mut rng);
        if eos_ids.contains(&next) {
            return Generation {
                ids,
                stop: StopReason::Eos,
            };
        }
        on_token(next);
        ids.push(next);
        input = vec![next];
    }
    Generation {
        ids,
        stop: StopReason::MaxNewTokens,
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
