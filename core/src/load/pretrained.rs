//! A Hugging Face model directory loaded as one thing: config, weights, tokenizer.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::Serialize;

use crate::error::{CoreError, Result};
use crate::load::models::{CausalLm, ModelConfig};
use crate::load::tokenizer::ChatTokenizer;
use crate::load::weights::{checkpoint_files, load_weights, read_header};

/// A loaded model: architecture, weights on a device, tokenizer.
#[derive(Debug)]
pub struct Pretrained {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub model: CausalLm,
    pub tokenizer: ChatTokenizer,
    pub device: Device,
}

/// What `clo inspect` reports of a model directory.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dir: PathBuf,
    pub model_type: &'static str,
    pub architecture: String,
    pub num_parameters: usize,
    /// Storage dtypes of the checkpoint's tensors (clo computes in f32).
    pub checkpoint_dtypes: Vec<String>,
    pub torch_dtype: Option<String>,
    pub vocab_size: usize,
    pub tokenizer_vocab_size: usize,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: String,
    pub sliding_windows: Vec<Option<usize>>,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub max_position_embeddings: usize,
    pub chat_template: bool,
    /// What attention-only training updates in this family.
    pub attention_targets: Vec<&'static str>,
    /// The file the chat template came from (chat_template.jinja, chat_template.json or
    /// tokenizer_config.json).
    pub chat_template_file: Option<PathBuf>,
    pub eos_token_ids: Vec<u32>,
    pub checkpoint_files: Vec<PathBuf>,
}

/// Reads config and tokenizer and checks that they agree; no weights are read.
fn config_and_tokenizer(dir: &Path) -> Result<(ModelConfig, ChatTokenizer)> {
    if crate::load::gguf::is_gguf(dir) && dir.is_file() {
        let (_, config, tokenizer) = crate::load::gguf::read_config_and_tokenizer(dir)?;
        return Ok((config, tokenizer));
    }
    if !dir.is_dir() {
        return Err(CoreError::MissingFile {
            path: dir.to_path_buf(),
            what: "model directory",
        });
    }
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let tokenizer = ChatTokenizer::from_dir(dir, &config.eos_token_ids)?;
    if tokenizer.vocab_size() > config.decoder.vocab_size {
        return Err(CoreError::VocabMismatch {
            path: dir.join("tokenizer.json"),
            tokenizer: tokenizer.vocab_size(),
            model: config.decoder.vocab_size,
        });
    }
    Ok((config, tokenizer))
}

impl Pretrained {
    /// The model's context in tokens (`max_position_embeddings`).
    pub fn context(&self) -> usize {
        self.config.decoder.max_position_embeddings
    }

    /// Loads a model directory, or a GGUF file, onto `device`.
    ///
    /// `dir` may be a PEFT adapter directory (`adapter_config.json`, no `config.json`): its
    /// base model (`base_model_name_or_path`, beside the adapter or as given) is loaded with the
    /// adapter on it.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if crate::load::peft::is_adapter_dir(dir) {
            let config = crate::load::peft::AdapterConfig::parse(
                &dir.join(crate::load::peft::ADAPTER_CONFIG),
                &crate::error::read_to_string(
                    &dir.join(crate::load::peft::ADAPTER_CONFIG),
                    "PEFT adapter config",
                )?,
            )?;
            let base = crate::load::peft::base_dir(dir, &config)?;
            return Self::load(&base, device)?.with_adapter(dir);
        }
        if crate::load::gguf::is_gguf(dir) && dir.is_file() {
            let (config, model, tokenizer) = crate::load::gguf::load(dir, device)?;
            return Ok(Self {
                dir: dir.to_path_buf(),
                config,
                model,
                tokenizer,
                device: device.clone(),
            });
        }
        let (config, tokenizer) = config_and_tokenizer(dir)?;
        crate::limits::check_model_fits(&config.decoder, dir.display())?;
        let mut model = config.decoder.init(device);
        load_weights(&mut model, dir, &config.decoder)?;
        tracing::info!(dir = %dir.display(), family = config.family.model_type(), "model loaded");
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            model,
            tokenizer,
            device: device.clone(),
        })
    }

    /// This model with the PEFT LoRA adapter of directory `adapter` on it (`adapter_config.json`
    /// and `adapter_model.safetensors`, as `clo export --peft`, peft or the browser write them).
    pub fn with_adapter(mut self, adapter: &Path) -> Result<Self> {
        use crate::load::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterConfig, apply_adapter};
        let config_path = adapter.join(ADAPTER_CONFIG);
        let config = AdapterConfig::parse(
            &config_path,
            &crate::error::read_to_string(&config_path, "PEFT adapter config")?,
        )?;
        let weights_path = adapter.join(ADAPTER_WEIGHTS);
        let weights = std::fs::read(&weights_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CoreError::MissingFile {
                path: weights_path.clone(),
                what: "PEFT adapter weights",
            },
            _ => CoreError::io("read", &weights_path, e),
        })?;
        self.model = apply_adapter(self.model, &config, &weights, &weights_path, &self.device)?;
        tracing::info!(adapter = %adapter.display(), rank = config.rank, "PEFT adapter applied");
        Ok(self)
    }

    /// Loads a model directory whose files are already in memory (what the browser fetched):
    /// `files` by name (`config.json`, `tokenizer.json`, `model.safetensors`, ...); `root` (a
    /// URL) names them in errors.
    pub fn from_memory(
        root: &Path,
        files: &std::collections::BTreeMap<String, Vec<u8>>,
        device: &Device,
    ) -> Result<Self> {
        let source = crate::load::files::ModelFiles::Memory { root, files };
        let text = source.read_string("config.json", "model config")?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            CoreError::json(
                &source.path("config.json"),
                &e,
                "config.json must be a JSON object",
            )
        })?;
        let config = ModelConfig::from_value(&source.path("config.json"), value)?;
        let tokenizer = ChatTokenizer::from_files(&source, &config.eos_token_ids)?;
        if tokenizer.vocab_size() > config.decoder.vocab_size {
            return Err(CoreError::VocabMismatch {
                path: source.path("tokenizer.json"),
                tokenizer: tokenizer.vocab_size(),
                model: config.decoder.vocab_size,
            });
        }
        crate::limits::check_model_fits(&config.decoder, root.display())?;
        let mut model = config.decoder.init(device);
        crate::load::weights::load_weights_from_memory(&mut model, root, files, &config.decoder)?;
        Ok(Self {
            dir: root.to_path_buf(),
            config,
            model,
            tokenizer,
            device: device.clone(),
        })
    }

    /// Describes a model directory from its files, without loading the weights.
    pub fn summarize(dir: &Path) -> Result<Summary> {
        let (config, tokenizer, files, dtypes) = if crate::load::gguf::is_gguf(dir) && dir.is_file()
        {
            let (file, config, tokenizer) = crate::load::gguf::read_config_and_tokenizer(dir)?;
            let types = crate::load::gguf::tensor_types(&file);
            (config, tokenizer, vec![dir.to_path_buf()], types)
        } else {
            let (config, tokenizer) = config_and_tokenizer(dir)?;
            let files = checkpoint_files(dir)?;
            let mut dtypes = Vec::new();
            for file in &files {
                for (dtype, _) in read_header(file)?.into_values() {
                    if !dtypes.contains(&dtype) {
                        dtypes.push(dtype);
                    }
                }
            }
            dtypes.sort();
            (config, tokenizer, files, dtypes)
        };
        let d = &config.decoder;
        Ok(Summary {
            dir: dir.to_path_buf(),
            model_type: config.family.model_type(),
            architecture: format!(
                "{}-layer decoder, {} query / {} key-value heads of {}, SwiGLU {}",
                d.num_layers, d.num_heads, d.num_kv_heads, d.head_dim, d.intermediate_size
            ),
            num_parameters: d.num_parameters(),
            checkpoint_dtypes: dtypes,
            torch_dtype: config.torch_dtype.clone(),
            vocab_size: d.vocab_size,
            tokenizer_vocab_size: tokenizer.vocab_size(),
            num_layers: d.num_layers,
            hidden_size: d.hidden_size,
            intermediate_size: d.intermediate_size,
            num_heads: d.num_heads,
            num_kv_heads: d.num_kv_heads,
            head_dim: d.head_dim,
            rope_theta: d.rope.theta,
            rope_scaling: format!("{:?}", d.rope.scaling),
            sliding_windows: d.sliding_windows.clone(),
            tie_word_embeddings: d.tie_word_embeddings,
            qkv_bias: d.qkv_bias,
            max_position_embeddings: d.max_position_embeddings,
            chat_template: tokenizer.has_chat_template(),
            attention_targets: config.family.attention_targets().to_vec(),
            chat_template_file: tokenizer.template_path().map(Path::to_path_buf),
            eos_token_ids: tokenizer.eos_ids().to_vec(),
            checkpoint_files: files,
        })
    }
}
