//! What `clo bench` measures, apart from any clock: the model shapes it benchmarks (random
//! weights of real models' shapes, nothing downloaded), the synthetic token ids of a training
//! step or a generation, and the floating-point operations each does (for MFU).
//!
//! The workloads are plain data (token ids, method settings, the model's `config.json`), so the
//! same work can be handed to PyTorch: `clo bench --compare-torch` writes them as JSON for its
//! script. Timing, memory statistics and printing are the binary's.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{CoreError, Result};
use crate::infer::score::Pair;
use crate::load::models::{DecoderConfig, ModelConfig};
use crate::train::batch::TokenizedQuad;
use crate::train::config::{Method, TrainableKind};
use crate::train::examples::Examples;
use crate::train::step::MicroBatch;

/// A model shape `clo bench --shape` builds with random weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// 2 layers, hidden 64, vocabulary 512: for CI and quick checks.
    #[serde(rename = "tiny")]
    Tiny,
    #[serde(rename = "smollm2-135m")]
    SmolLm2_135m,
    #[serde(rename = "qwen2.5-0.5b")]
    Qwen25_05b,
    #[serde(rename = "llama-3.2-1b")]
    Llama32_1b,
    #[serde(rename = "llama-3-8b")]
    Llama3_8b,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Tiny,
        Shape::SmolLm2_135m,
        Shape::Qwen25_05b,
        Shape::Llama32_1b,
        Shape::Llama3_8b,
    ];
    pub const NAMES: [&str; 5] = [
        "tiny",
        "smollm2-135m",
        "qwen2.5-0.5b",
        "llama-3.2-1b",
        "llama-3-8b",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|s| *s == self).expect("listed")]
    }

    /// The model's `config.json` (as published for the real model, weights in f32), which
    /// transformers reads unchanged.
    pub fn hf_config(self) -> Value {
        let llama = |hidden: usize,
                     inter: usize,
                     layers: usize,
                     heads: usize,
                     kv: usize,
                     vocab: usize,
                     theta: f64,
                     tie: bool| {
            json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": hidden,
                "intermediate_size": inter,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "num_key_value_heads": kv,
                "head_dim": hidden / heads,
                "vocab_size": vocab,
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5,
                "rope_theta": theta,
                "hidden_act": "silu",
                "attention_bias": false,
                "mlp_bias": false,
                "tie_word_embeddings": tie,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "torch_dtype": "float32",
            })
        };
        match self {
            Shape::Tiny => llama(64, 128, 2, 4, 2, 512, 10_000.0, true),
            Shape::SmolLm2_135m => llama(576, 1536, 30, 9, 3, 49_152, 100_000.0, true),
            Shape::Llama3_8b => llama(4096, 14_336, 32, 32, 8, 128_256, 500_000.0, false),
            Shape::Llama32_1b => {
                let mut c = llama(2048, 8192, 16, 32, 8, 128_256, 500_000.0, true);
                c["max_position_embeddings"] = json!(131_072);
                c["rope_scaling"] = json!({
                    "rope_type": "llama3",
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                });
                c
            }
            Shape::Qwen25_05b => json!({
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "hidden_size": 896,
                "intermediate_size": 4864,
                "num_hidden_layers": 24,
                "num_attention_heads": 14,
                "num_key_value_heads": 2,
                "vocab_size": 151_936,
                "max_position_embeddings": 32_768,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1_000_000.0,
                "hidden_act": "silu",
                "tie_word_embeddings": true,
                "use_sliding_window": false,
                "sliding_window": 32_768,
                "max_window_layers": 24,
                "bos_token_id": 151_643,
                "eos_token_id": 151_645,
                "torch_dtype": "float32",
            }),
        }
    }

    /// The parsed config, as [`ModelConfig::from_file`] would read [`Self::hf_config`].
    pub fn config(self) -> ModelConfig {
        ModelConfig::from_value(std::path::Path::new(self.name()), self.hf_config())
            .expect("the shipped shapes are valid configs")
    }
}

impl std::str::FromStr for Shape {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        Shape::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Shape::ALL[i])
            .ok_or_else(|| {
                CoreError::Invalid(format!(
                    "unknown shape `{s}`; choose one of {}",
                    Shape::NAMES.join(", ")
                ))
            })
    }
}

/// The rows of one training step: `batch_size` examples of `method` (quadruples for clo,
/// preference pairs for dpo, supervised pairs for the sft variants), every row exactly
/// `seq_len` tokens (prompt `seq_len / 2`, response the rest), ids drawn uniformly below
/// `vocab` from `seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainWork {
    pub method: Method,
    pub batch_size: usize,
    pub seq_len: usize,
    /// `[prompt ids, response ids]` per row, in the objective's block layout.
    pub rows: Vec<(Vec<u32>, Vec<u32>)>,
    /// DPO only: each pair's direction (`true`: English prompt).
    pub english: Vec<bool>,
}

impl TrainWork {
    pub fn new(
        method: Method,
        batch_size: usize,
        seq_len: usize,
        vocab: usize,
        seed: u64,
    ) -> Result<Self> {
        if method == Method::SftDpo {
            return Err(CoreError::Invalid(
                "the `method` setting: sft+dpo is two stages; benchmark `sft` or `dpo`".into(),
            ));
        }
        if batch_size == 0 {
            return Err(CoreError::Invalid(
                "the `batch_size` setting must be at least 1".into(),
            ));
        }
        if seq_len < 2 {
            return Err(CoreError::Invalid(
                "the `seq_len` setting must be at least 2 (a prompt and a response token)".into(),
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let prompt_len = seq_len / 2;
        let response_len = seq_len - prompt_len;
        let mut ids =
            |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab as u32)).collect() };
        let quads: Vec<TokenizedQuad> = (0..batch_size)
            .map(|_| TokenizedQuad {
                en_prompt: ids(prompt_len),
                tgt_prompt: ids(prompt_len),
                en_response: ids(response_len),
                tgt_response: ids(response_len),
            })
            .collect();
        let examples = Examples::for_method(method, &quads, seq_len);
        let idx: Vec<usize> = (0..batch_size.min(examples.len())).collect();
        let MicroBatch { rows, english, .. } = examples.micro_batch(&idx, &[], seq_len);
        let rows = rows.into_iter().map(|p| (p.prompt, p.response)).collect();
        Ok(Self {
            method,
            batch_size,
            seq_len,
            rows,
            english,
        })
    }

    pub fn pairs(&self) -> Vec<Pair> {
        self.rows
            .iter()
            .map(|(prompt, response)| Pair {
                prompt: prompt.clone(),
                response: response.clone(),
            })
            .collect()
    }

    /// The step's micro-batch, with the reference log-prob of every row.
    pub fn micro_batch(&self, reference: Vec<f32>) -> MicroBatch {
        MicroBatch {
            rows: self.pairs(),
            reference,
            english: self.english.clone(),
        }
    }

    /// Prompt and response tokens of the step.
    pub fn tokens(&self) -> usize {
        self.rows.iter().map(|(p, r)| p.len() + r.len()).sum()
    }
}

/// The prompts of a generation benchmark: `batch_size` rows of `seq_len` ids below `vocab`.
pub fn generation_prompts(
    batch_size: usize,
    seq_len: usize,
    vocab: usize,
    seed: u64,
) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..batch_size)
        .map(|_| {
            (0..seq_len.max(1))
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

/// Multiply-add counts of the decoder's matrix products, per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulParams {
    /// q, k, v, o of one layer.
    pub attention: usize,
    /// gate, up, down of one layer.
    pub mlp: usize,
    /// The LM head (`hidden x vocab`, tied or not).
    pub head: usize,
    pub layers: usize,
    /// `num_heads * head_dim`: the width of `q k^T` and `p v`.
    pub q_dim: usize,
}

impl MatmulParams {
    pub fn of(config: &DecoderConfig) -> Self {
        let h = config.hidden_size;
        let q = config.num_heads * config.head_dim;
        let kv = config.num_kv_heads * config.head_dim;
        Self {
            attention: 2 * h * q + 2 * h * kv,
            mlp: 3 * h * config.intermediate_size,
            head: h * config.vocab_size,
            layers: config.num_layers,
            q_dim: q,
        }
    }

    /// Forward FLOPs of one row of `len` positions: 2 per multiply-add of every projection and
    /// of the LM head, plus `q k^T` and `p v` over the causal triangle (as flash attention
    /// counts them; eager implementations compute the full square).
    pub fn forward_flops(&self, len: usize) -> f64 {
        let (t, l) = (len as f64, self.layers as f64);
        let dense = 2.0 * t * (l * (self.attention + self.mlp) as f64 + self.head as f64);
        let causal_pairs = t * (t + 1.0) / 2.0;
        dense + l * 4.0 * causal_pairs * self.q_dim as f64
    }

    /// FLOPs of one training step on rows of the given lengths: the forward, the backward's
    /// input gradients (as many as the forward, minus the first layer's nothing-to-propagate
    /// which is ignored) and the weight gradients of what trains.
    pub fn train_flops(
        &self,
        row_lens: &[usize],
        trainable: TrainableKind,
        lora_rank: usize,
    ) -> f64 {
        let per_token_weight_grads = match trainable {
            TrainableKind::Attention => 2.0 * (self.layers * self.attention) as f64,
            TrainableKind::Full => {
                2.0 * (self.layers * (self.attention + self.mlp) + self.head) as f64
            }
            // The adapters' own products are small next to the frozen base's.
            TrainableKind::Lora => {
                let adapter = lora_rank * (self.attention / self.q_dim.max(1) + self.q_dim);
                2.0 * (self.layers * adapter) as f64
            }
        };
        row_lens
            .iter()
            .map(|&len| 2.0 * self.forward_flops(len) + len as f64 * per_token_weight_grads)
            .sum()
    }

    /// FLOPs of greedy generation: the prompt's forward, then one position per new token
    /// attending to everything before it.
    pub fn generate_flops(&self, rows: usize, prompt_len: usize, new_tokens: usize) -> f64 {
        let (l, q) = (self.layers as f64, self.q_dim as f64);
        let dense = 2.0 * (l * (self.attention + self.mlp) as f64 + self.head as f64);
        let decode: f64 = (0..new_tokens)
            .map(|i| dense + l * 4.0 * (prompt_len + i + 1) as f64 * q)
            .sum();
        rows as f64 * (self.forward_flops(prompt_len) + decode)
    }
}

// The memory model lives with training (a run checks its step against memory before it
// allocates); the bench prints it beside what it measures.
pub use crate::train::memory::{MemoryEstimate, StepShape, train_memory};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::models::AttentionKind;

    /// The memory model's terms: half storage halves the frozen weights only, chunks shrink the
    /// output layer's term, checkpoints the activations; and it predicts the peaks measured on
    /// the CPU (README, Memory) within 15%.
    #[test]
    fn memory_model_terms_and_measured_peaks() {
        let smol = "smollm2-135m".parse::<Shape>().unwrap().config().decoder;
        let qwen = "qwen2.5-0.5b".parse::<Shape>().unwrap().config().decoder;
        let att = TrainableKind::Attention;
        let (mat, eff) = (AttentionKind::Materialized, AttentionKind::MemoryEfficient);
        let gib = |e: MemoryEstimate| e.total / (1u64 << 30) as f64;
        let shape = |rows, seq, stored_bytes, grad_checkpoint, logp_chunk, attention| StepShape {
            rows,
            seq,
            trainable: att,
            lora_rank: 8,
            stored_bytes,
            grad_checkpoint,
            logp_chunk,
            attention,
        };
        let plain = train_memory(&smol, &shape(8, 128, 4, false, 0, mat));
        let half = train_memory(&smol, &shape(8, 128, 2, false, 0, mat));
        assert!(half.weights < plain.weights && half.weights > plain.weights / 2.0);
        assert_eq!(half.optimizer, plain.optimizer);
        let ckpt = train_memory(&smol, &shape(8, 128, 4, true, 0, mat));
        assert!(ckpt.activations < plain.activations / 5.0);
        let chunked = train_memory(&smol, &shape(8, 128, 4, true, 32, mat));
        assert!((chunked.head - ckpt.head / 4.0).abs() < 1.0);
        // (prediction, measured GiB): `clo bench train` on the 2-core CPU.
        // Measured with the fused SwiGLU (`clo_shaders::swiglu`), the MLP of both shapes.
        let memory =
            |m, r, s, ckpt, chunk, kind| gib(train_memory(m, &shape(r, s, 4, ckpt, chunk, kind)));
        for (predicted, measured) in [
            (gib(plain), 2.60),
            (memory(&smol, 8, 128, false, 0, eff), 2.14),
            (memory(&smol, 8, 128, true, 0, eff), 1.41),
            (memory(&smol, 8, 128, true, 32, eff), 1.22),
            (memory(&qwen, 16, 256, false, 64, eff), 9.52),
            (memory(&qwen, 16, 256, true, 64, eff), 3.85),
        ] {
            assert!(
                (predicted - measured).abs() / measured < 0.15,
                "predicted {predicted:.2} GiB, measured {measured:.2}"
            );
        }
    }

    #[test]
    fn shapes_parse_and_count_the_published_parameters() {
        for shape in Shape::ALL {
            assert_eq!(shape.name().parse::<Shape>().unwrap(), shape);
        }
        let err = "gpt-5".parse::<Shape>().unwrap_err().to_string();
        assert!(err.contains("smollm2-135m"), "{err}");
        // The published sizes: 134.5M, 494M (incl. q/k/v biases), 1.24B, 8.03B.
        let params = |s: Shape| s.config().decoder.num_parameters() as f64 / 1e6;
        assert!((params(Shape::SmolLm2_135m) - 134.5).abs() < 0.5);
        assert!((params(Shape::Qwen25_05b) - 494.0).abs() < 1.0);
        assert!((params(Shape::Llama32_1b) - 1235.8).abs() < 1.0);
        assert!((params(Shape::Llama3_8b) - 8030.3).abs() < 1.0);
    }

    #[test]
    fn train_work_has_the_method_layout_and_exact_lengths() {
        let clo = TrainWork::new(Method::Clo, 2, 9, 100, 7).unwrap();
        assert_eq!(clo.rows.len(), 8);
        assert!(clo.rows.iter().all(|(p, r)| p.len() == 4 && r.len() == 5));
        assert!(
            clo.rows
                .iter()
                .flat_map(|(p, r)| p.iter().chain(r))
                .all(|&t| t < 100)
        );
        // Block 0 is (x_en, y_en), block 1 (x_en, y_tgt): same prompts.
        assert_eq!(clo.rows[0].0, clo.rows[2].0);
        assert_eq!(clo.tokens(), 72);
        assert_eq!(TrainWork::new(Method::Clo, 2, 9, 100, 7).unwrap(), clo);
        assert_ne!(TrainWork::new(Method::Clo, 2, 9, 100, 8).unwrap(), clo);
        let dpo = TrainWork::new(Method::Dpo, 3, 8, 100, 7).unwrap();
        assert_eq!((dpo.rows.len(), dpo.english.len()), (6, 3));
        assert_eq!(
            TrainWork::new(Method::Sft, 3, 8, 100, 7)
                .unwrap()
                .rows
                .len(),
            3
        );
        assert!(TrainWork::new(Method::SftDpo, 1, 8, 100, 7).is_err());
        assert!(TrainWork::new(Method::Clo, 1, 1, 100, 7).is_err());
    }

    #[test]
    fn flops_follow_the_usual_six_n_rule() {
        let c = Shape::SmolLm2_135m.config().decoder;
        let m = MatmulParams::of(&c);
        // Full training of a short row costs about 6 x (non-embedding params + head) per token.
        let n = (m.layers * (m.attention + m.mlp) + m.head) as f64;
        let per_token = m.train_flops(&[1], TrainableKind::Full, 0);
        assert!(
            (per_token / (6.0 * n) - 1.0).abs() < 0.01,
            "{per_token} vs {}",
            6.0 * n
        );
        // Attention-only training skips the MLP's and the head's weight gradients.
        assert!(
            m.train_flops(&[128], TrainableKind::Attention, 0)
                < m.train_flops(&[128], TrainableKind::Full, 0)
        );
        // Generation: one forward per token (prompt of 1, no new tokens: one forward).
        assert_eq!(m.generate_flops(1, 1, 0), m.forward_flops(1));
    }
}
