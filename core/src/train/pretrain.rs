//! Pretraining a small Llama-architecture model from scratch: a byte-level BPE tokenizer trained
//! on the corpus (`tokenizers`' trainer), a decoder initialised at random, next-token training
//! with AdamW, and a Hugging Face model directory as the result (`config.json`,
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` with a chat template).
//!
//! Work in progress lives in `OUT.work/` (resumable checkpoint, `metrics.jsonl`); `OUT` appears
//! only when training is done, with `pretrain.json` saying how it was made.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::error::{CoreError, Result};
use crate::fsutil::{replace_dir_atomically, write_atomically, write_json_atomically};
use crate::infer::score::Pair;
use crate::load::models::{CausalLm, DecoderConfig, RopeConfig, RopeScaling};
use crate::load::tokenizer::ChatTokenizer;
use crate::train::checkpoint::{load_optimizer, load_trainable, write_checkpoint};
use crate::train::driver::{Flow, MetricsLog, StepDone, Stopped, run_steps};
use crate::train::loss::NllReduction;
use crate::train::optim::Schedule;
use crate::train::step::{MicroBatch, Objective, OptimizerSettings, Trainer};

/// End of a turn and of a document; the model's EOS.
pub const END: &str = "<|end|>";
pub const USER: &str = "<|user|>";
pub const ASSISTANT: &str = "<|assistant|>";
/// The chat template written to `tokenizer_config.json`:
/// `<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>`.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// One training document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Doc {
    /// A dialog turn, trained in the chat template (prompt and response both learned).
    Chat { prompt: String, response: String },
    /// Plain text, followed by the end token.
    Text { text: String },
}

impl Doc {
    /// The texts the tokenizer learns from.
    fn texts(&self) -> Vec<&str> {
        match self {
            Doc::Chat { prompt, response } => vec![prompt, response],
            Doc::Text { text } => vec![text],
        }
    }
}

/// Architecture and training settings of `clo pretrain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Longest training sequence (longer documents are cut).
    pub max_len: usize,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Standard deviation of the initial weights (normal, mean 0), as transformers'
    /// `initializer_range`.
    pub init_std: f64,
    pub seed: u64,
    /// Write a resumable checkpoint every this many steps.
    pub save_every: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 512,
            hidden_size: 128,
            intermediate_size: 352,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            max_len: 128,
            steps: 3000,
            batch_size: 32,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 100,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            init_std: 0.02,
            seed: 0,
            save_every: 250,
        }
    }
}

impl PretrainConfig {
    pub fn validate(&self) -> Result<()> {
        use crate::limits::{self, Bound};
        let bad = |m: String| Err(CoreError::Invalid(m));
        // What `decoder()` divides by or allocates per is bounded first; `check_decoder` below
        // checks the whole shape.
        let origin = "the pretraining settings";
        limits::LAYERS.check(origin, self.num_layers)?;
        limits::HEADS.check(origin, self.num_heads)?;
        limits::KV_HEADS.check(origin, self.num_kv_heads)?;
        limits::STEPS.check(origin, self.steps)?;
        limits::BATCH_SIZE.check(origin, self.batch_size)?;
        Bound {
            min: 8,
            ..limits::MAX_LEN
        }
        .check(origin, self.max_len)?;
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden size {} must be a multiple of the {} heads",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} key/value heads must divide the {} heads",
                self.num_kv_heads, self.num_heads
            ));
        }
        if !(self.hidden_size / self.num_heads).is_multiple_of(2) {
            return bad("the head size (hidden size / heads) must be even for RoPE".into());
        }
        if self.vocab_size < 300 {
            return bad(format!(
                "vocabulary size {} is too small: a byte-level BPE needs 256 bytes + special tokens; use 300 or more",
                self.vocab_size
            ));
        }
        let decoder = self.decoder();
        limits::check_decoder(&decoder, origin)?;
        limits::check_model_fits(&decoder, "the model to pretrain")
    }

    /// The decoder this config describes.
    pub fn decoder(&self) -> DecoderConfig {
        let head_dim = self.hidden_size / self.num_heads;
        DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim,
            rms_norm_eps: 1e-5,
            rope: RopeConfig {
                theta: 10_000.0,
                head_dim,
                scaling: RopeScaling::Default,
            },
            max_position_embeddings: self.max_len.next_power_of_two().max(256),
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            tie_word_embeddings: true,
            sliding_windows: vec![None; self.num_layers],
            options: Default::default(),
        }
    }
}

/// A decoder of a few thousand parameters for unit tests (one layer, hidden 16, GQA).
#[cfg(test)]
pub(crate) fn tiny_test_decoder() -> DecoderConfig {
    tiny_test_decoder_of(1)
}

/// [`tiny_test_decoder`] with `layers` layers.
#[cfg(test)]
pub(crate) fn tiny_test_decoder_of(layers: usize) -> DecoderConfig {
    PretrainConfig {
        vocab_size: 320,
        hidden_size: 16,
        intermediate_size: 32,
        num_layers: layers,
        num_heads: 2,
        num_kv_heads: 1,
        ..Default::default()
    }
    .decoder()
}

/// Trains a byte-level BPE tokenizer of `vocab_size` ids (special tokens included) on `docs`.
pub fn train_tokenizer(docs: &[Doc], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    let err = |e: tokenizers::Error| CoreError::Invalid(format!("tokenizer training: {e}"));
    let specials: Vec<AddedToken> = [END, USER, ASSISTANT]
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(err)?;
    let texts: Vec<&str> = docs.iter().flat_map(Doc::texts).collect();
    tokenizer
        .train(&mut trainer, texts.into_iter())
        .map_err(err)?;
    let json = tokenizer.to_string(false).map_err(err)?;
    tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(err)
}

/// Draws every rank-2 weight (projections, embeddings) from N(0, std²); norms stay at one.
fn init_weights(model: CausalLm, std: f64, seed: u64) -> CausalLm {
    struct Normal {
        rng: StdRng,
        std: f64,
    }
    impl ModuleMapper for Normal {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D != 2 {
                return param;
            }
            let (rng, std) = (&mut self.rng, self.std);
            param.map(|t| {
                let shape = t.shape();
                let n = shape.num_elements();
                // Box-Muller: two uniforms give two independent standard normals.
                let mut values = Vec::with_capacity(n + 1);
                while values.len() < n {
                    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                    let r = (-2.0 * u.ln()).sqrt() * std;
                    let a = std::f64::consts::TAU * v;
                    values.push((r * a.cos()) as f32);
                    values.push((r * a.sin()) as f32);
                }
                values.truncate(n);
                Tensor::from_data(TensorData::new(values, shape), &t.device())
            })
        }
    }
    model.map(&mut Normal {
        rng: StdRng::seed_from_u64(seed),
        std,
    })
}

/// Token ids of a document, cut to `max_len`.
fn doc_ids(tok: &ChatTokenizer, doc: &Doc, max_len: usize) -> Result<Vec<u32>> {
    let mut ids = match doc {
        Doc::Chat { prompt, response } => {
            let mut ids = tok.prompt_ids(prompt, true)?;
            ids.extend(tok.response_ids(response)?);
            ids
        }
        Doc::Text { text } => tok.response_ids(text)?,
    };
    ids.truncate(max_len);
    Ok(ids)
}

/// One line of `OUT.work/metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainStep {
    pub step: usize,
    /// Mean next-token loss of the step's batch before its update.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens of the step's documents (each but the first of a document is predicted).
    pub tokens: usize,
}

/// What `OUT/pretrain.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSummary {
    pub config: PretrainConfig,
    /// How the corpus was made (free-form, from the caller: the command line).
    pub corpus: serde_json::Value,
    pub documents: usize,
    pub tokens_per_epoch: usize,
    pub num_parameters: usize,
    /// Mean loss of the first and of the last points of `loss_curve`.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Mean loss of every `clamp(steps / 20, 1, 50)` steps.
    pub loss_curve: Vec<f64>,
    pub seconds: f64,
}

/// Progress reports of [`pretrain`].
#[derive(Debug)]
pub enum PretrainProgress<'a> {
    /// The tokenizer is ready; training starts at `step` of `total`.
    Started {
        step: usize,
        total: usize,
    },
    Step(&'a PretrainStep),
}

/// Resumable state in `OUT.work/checkpoint/state.json`.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    config: PretrainConfig,
    step: usize,
    metrics_bytes: u64,
    seconds: f64,
}

/// The working directory of a pretraining into `out`.
pub fn work_dir(out: &Path) -> PathBuf {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{name}.work"))
}

/// Writes a Hugging Face model directory (Llama architecture) of `model` and its tokenizer.
pub fn write_model_dir(
    out: &Path,
    model: &CausalLm,
    tokenizer: &tokenizers::Tokenizer,
    config: &PretrainConfig,
    extra: &[(&str, serde_json::Value)],
) -> Result<()> {
    let d = config.decoder();
    let id = |t: &str| tokenizer.token_to_id(t);
    let eos = id(END).ok_or_else(|| CoreError::Invalid("the tokenizer lacks <|end|>".into()))?;
    let hf = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": d.vocab_size,
        "hidden_size": d.hidden_size,
        "intermediate_size": d.intermediate_size,
        "num_hidden_layers": d.num_layers,
        "num_attention_heads": d.num_heads,
        "num_key_value_heads": d.num_kv_heads,
        "head_dim": d.head_dim,
        "max_position_embeddings": d.max_position_embeddings,
        "rms_norm_eps": d.rms_norm_eps,
        "rope_theta": d.rope.theta,
        "hidden_act": "silu",
        "tie_word_embeddings": true,
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": config.init_std,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "float32",
    });
    let tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": END,
        "pad_token": END,
        "bos_token": null,
        "add_bos_token": false,
        "model_max_length": d.max_position_embeddings,
        "chat_template": CHAT_TEMPLATE,
    });
    let generation = json!({ "eos_token_id": eos, "pad_token_id": eos });
    let tok_json = tokenizer
        .to_string(true)
        .map_err(|e| CoreError::Invalid(format!("tokenizer: {e}")))?;
    let model = model.clone().valid();
    replace_dir_atomically(out, |tmp| {
        crate::load::weights::save_safetensors(&model, &d, &tmp.join("model.safetensors"))?;
        write_json_atomically(&tmp.join("config.json"), &hf)?;
        write_json_atomically(&tmp.join("tokenizer_config.json"), &tok_config)?;
        write_json_atomically(&tmp.join("generation_config.json"), &generation)?;
        write_atomically(&tmp.join("tokenizer.json"), tok_json.as_bytes())?;
        for (name, value) in extra {
            write_json_atomically(&tmp.join(name), value)?;
        }
        Ok(())
    })
}

/// Reads a corpus file: JSONL of `{"text"}` or `{"prompt", "response"}` lines.
pub fn read_corpus(path: &Path) -> Result<Vec<Doc>> {
    Ok(crate::data::jsonl::read_jsonl::<Doc>(
        path,
        "pretraining documents",
        "each line is {\"text\": str} or {\"prompt\": str, \"response\": str}",
    )?
    .into_iter()
    .map(|(_, d)| d)
    .collect())
}

/// Where [`pretrain`] writes: the model directory `out` (with `extra` JSON files beside its own),
/// and whether to continue from `OUT.work/`.
#[derive(Clone, Copy)]
pub struct PretrainTarget<'a> {
    pub out: &'a Path,
    pub resume: bool,
    pub extra: &'a [(&'a str, serde_json::Value)],
}

/// Pretrains a model on `docs` and writes it to `target.out`, with `target.extra` JSON files
/// beside the model's own. With `target.resume`, continues from the checkpoint in `OUT.work/`
/// (the corpus and config must be those it was started with).
pub fn pretrain(
    docs: &[Doc],
    corpus: serde_json::Value,
    config: &PretrainConfig,
    target: PretrainTarget<'_>,
    device: &Device,
    progress: &mut dyn FnMut(PretrainProgress),
) -> Result<PretrainSummary> {
    let PretrainTarget { out, resume, extra } = target;
    config.validate()?;
    if docs.is_empty() {
        return Err(CoreError::Invalid("the pretraining corpus is empty".into()));
    }
    let work = work_dir(out);
    let ckpt = work.join("checkpoint");
    let state_path = ckpt.join("state.json");
    let saved: Option<State> = if resume && state_path.exists() {
        let text = crate::error::read_to_string(&state_path, "pretraining state")?;
        let s: State = serde_json::from_str(&text).map_err(|e| {
            CoreError::json(&state_path, &e, "delete the .work directory to start over")
        })?;
        if &s.config != config {
            return Err(CoreError::Invalid(format!(
                "{} was started with other settings; resume with the same flags, or delete {} to start over",
                work.display(),
                work.display()
            )));
        }
        Some(s)
    } else {
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|e| CoreError::io("remove", &work, e))?;
        }
        None
    };
    std::fs::create_dir_all(&work).map_err(|e| CoreError::io("create", &work, e))?;

    // The tokenizer is a deterministic function of the corpus; it is kept with the checkpoint,
    // in a directory clo loads as a model's tokenizer (with the chat template), so documents
    // are tokenized as clo will tokenize prompts and responses later.
    let tok_dir = work.join("tok");
    let tok_path = tok_dir.join("tokenizer.json");
    let hf_tokenizer = if saved.is_some() && tok_path.exists() {
        tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| CoreError::Tokenizer {
            path: tok_path.clone(),
            message: e.to_string(),
        })?
    } else {
        let t = train_tokenizer(docs, config.vocab_size)?;
        let json = t
            .to_string(false)
            .map_err(|e| CoreError::Invalid(format!("tokenizer: {e}")))?;
        write_atomically(&tok_path, json.as_bytes())?;
        write_json_atomically(
            &tok_dir.join("tokenizer_config.json"),
            &json!({"eos_token": END, "chat_template": CHAT_TEMPLATE}),
        )?;
        t
    };
    let eos = hf_tokenizer
        .token_to_id(END)
        .ok_or_else(|| CoreError::Invalid("the trained tokenizer lacks <|end|>".into()))?;
    let tok = ChatTokenizer::from_dir(&tok_dir, &[eos])?;
    let seqs: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| doc_ids(&tok, d, config.max_len))
        .collect::<Result<_>>()?;
    let tokens_per_epoch: usize = seqs.iter().map(Vec::len).sum();

    let decoder = config.decoder();
    let ad = device.clone().autodiff();
    let mut model = init_weights(decoder.init(&ad), config.init_std, config.seed).unfreeze();
    // Next-token prediction: SFT on (first token, rest) rows, every token after the first
    // predicted, with GPT-style AdamW betas.
    let mut trainer = Trainer::new(
        Objective::Sft {
            reduction: NllReduction::TokenMean,
        },
        OptimizerSettings::pretraining(config.weight_decay, config.max_grad_norm),
    );
    let mut start = 0;
    let mut seconds_before = 0.0;
    let metrics_path = work.join("metrics.jsonl");
    let mut metrics_bytes = 0u64;
    if let Some(s) = &saved {
        load_trainable(&mut model, &ckpt.join("trainable.bpk"))?;
        load_optimizer(&ckpt, &mut trainer)?;
        start = s.step;
        seconds_before = s.seconds;
        metrics_bytes = s.metrics_bytes;
        tracing::info!(step = start, "pretraining resumed");
    }
    let mut metrics = MetricsLog::open(&metrics_path, metrics_bytes)?;

    let schedule = Schedule {
        lr: config.lr,
        min_lr: config.min_lr,
        warmup_steps: config.warmup_steps,
        total_steps: config.steps,
    };
    let per_epoch = seqs.len().div_ceil(config.batch_size);
    let started = Instant::now();
    progress(PretrainProgress::Started {
        step: start,
        total: config.steps,
    });
    // Epoch e's order is a function of (seed, e), so a resumed run sees the same batches.
    let epoch_order = |epoch: usize| {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        order
    };
    let mut order = (start / per_epoch, epoch_order(start / per_epoch));
    let mut plan = |step: usize| {
        let (epoch, k) = (step / per_epoch, step % per_epoch);
        if order.0 != epoch {
            order = (epoch, epoch_order(epoch));
        }
        let order = &order.1;
        let idx = &order[k * config.batch_size..((k + 1) * config.batch_size).min(seqs.len())];
        let rows = idx
            .iter()
            .map(|&i| Pair {
                prompt: seqs[i][..1].to_vec(),
                response: seqs[i][1..].to_vec(),
            })
            .collect();
        (
            epoch,
            vec![MicroBatch {
                rows,
                ..MicroBatch::default()
            }],
        )
    };
    let mut after = |model: &CausalLm, trainer: &Trainer, done: StepDone| -> Result<Flow> {
        let line = PretrainStep {
            step: done.step,
            loss: done.report.loss,
            lr: done.lr,
            grad_norm: done.report.grad_norm,
            tokens: done.report.tokens,
        };
        metrics.append(&line)?;
        progress(PretrainProgress::Step(&line));
        let finished = done.step + 1;
        if finished.is_multiple_of(config.save_every) && finished < config.steps {
            let state = State {
                config: config.clone(),
                step: finished,
                metrics_bytes: metrics.bytes(),
                seconds: seconds_before + started.elapsed().as_secs_f64(),
            };
            write_checkpoint(&ckpt, model, trainer.optimizer(), |tmp| {
                write_json_atomically(&tmp.join("state.json"), &state)
            })?;
        }
        Ok(Flow::Continue)
    };
    let (model, stopped) = run_steps(
        model,
        &mut trainer,
        &schedule,
        start..config.steps,
        &mut plan,
        &mut after,
    )?;
    if let Stopped::NonFinite { step, what, report } = stopped {
        return Err(CoreError::Invalid(format!(
            "pretraining diverged at step {step} ({what} not finite: loss {}, grad norm {}); lower the `lr` setting and start over",
            report.loss, report.grad_norm
        )));
    }

    let text = crate::error::read_to_string(&metrics_path, "pretraining metrics")?;
    let losses: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<PretrainStep>(l).ok())
        .map(|s| s.loss)
        .collect();
    let chunk = (config.steps / 20).clamp(1, 50);
    let curve: Vec<f64> = losses
        .chunks(chunk)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let summary = PretrainSummary {
        config: config.clone(),
        corpus,
        documents: docs.len(),
        tokens_per_epoch,
        num_parameters: decoder.num_parameters(),
        first_loss: curve.first().copied().unwrap_or(f64::NAN),
        last_loss: curve.last().copied().unwrap_or(f64::NAN),
        loss_curve: curve,
        seconds: seconds_before + started.elapsed().as_secs_f64(),
    };
    let mut files = vec![(
        "pretrain.json",
        serde_json::to_value(&summary).expect("serializes"),
    )];
    files.extend(extra.iter().cloned());
    write_model_dir(out, &model, &hf_tokenizer, config, &files)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(summary)
}

#[cfg(test)]
mod tests;
