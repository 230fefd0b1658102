//! Model families and their Hugging Face configs. Each family file mirrors its `config.json`
//! in a serde struct and turns it into the shared [`DecoderConfig`] (`into_config`).

pub mod gemma;
pub mod llama;
pub mod mistral;
pub mod precision;
pub mod qwen2;
pub mod qwen3;
pub mod rope;
pub mod transformer;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CoreError, Result, read_to_string};
pub use precision::Precision;
pub use rope::{RopeConfig, RopeScaling};
pub use transformer::{Activation, ArchOptions, AttentionKind, CausalLm, DecoderConfig, KvCache};

/// The architectures clo implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    #[serde(rename = "gemma3_text")]
    Gemma3Text,
}

impl Family {
    /// `model_type` values of config.json, as transformers names them.
    pub const MODEL_TYPES: &'static str =
        "model_type \"llama\", \"mistral\", \"qwen2\", \"qwen3\", \"gemma2\", \"gemma3_text\"";

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3Text => "gemma3_text",
        }
    }

    /// The modules attention-only training updates (method.md section 5), by their names in
    /// this family's checkpoints. Every supported family names its attention projections as
    /// Llama does; Qwen3's and Gemma 3's `q_norm` / `k_norm` stay frozen, as the paper trains
    /// the projections only.
    pub fn attention_targets(self) -> [&'static str; 4] {
        ["q_proj", "k_proj", "v_proj", "o_proj"]
    }
}

/// A token id or a list of them (`eos_token_id` may be either in config.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// Fields every Llama-family `config.json` shares, as transformers writes them.
#[derive(Debug, Clone, Deserialize)]
pub struct HfCommon {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent in old configs: then equal to `num_attention_heads` (no GQA).
    pub num_key_value_heads: Option<usize>,
    /// Absent or null: `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Gemma's name for the activation (preferred over `hidden_act` when present).
    pub hidden_activation: Option<String>,
    pub rope_theta: Option<f64>,
    /// Classic `rope_scaling` object (`rope_type` or the older `type`).
    pub rope_scaling: Option<Value>,
    /// transformers >= 5 writes `rope_parameters` (theta and scaling in one object).
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    /// The checkpoint's storage type: `torch_dtype` in transformers 4, `dtype` in 5. A config
    /// may hold both (a file that passed through both versions, or clo's own exports before
    /// they wrote only the key the base used): `dtype` wins.
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
}

fn silu() -> String {
    "silu".into()
}

impl HfCommon {
    /// The shared part of [`DecoderConfig`]; the family fills biases and windows.
    fn decoder(&self, path: &Path, default_theta: f64) -> Result<DecoderConfig> {
        let unsupported = |field, value: String, supported| CoreError::UnsupportedConfig {
            path: path.to_path_buf(),
            field,
            value,
            supported,
        };
        let (act_field, act) = match &self.hidden_activation {
            Some(a) => ("hidden_activation", a),
            None => ("hidden_act", &self.hidden_act),
        };
        let activation = match act.as_str() {
            "silu" => Activation::Silu,
            "gelu_pytorch_tanh" => Activation::GeluTanh,
            _ => {
                return Err(unsupported(
                    act_field,
                    format!("{act:?}"),
                    "hidden_act \"silu\" (SwiGLU) or \"gelu_pytorch_tanh\" (GeGLU)",
                ));
            }
        };
        // The sizes that arithmetic (a division) or an allocation (a per-layer list) uses below
        // are bounded first; `ModelConfig::from_value` checks the whole decoder at the end.
        let origin = path.display();
        use crate::limits;
        limits::LAYERS.check(&origin, self.num_hidden_layers)?;
        let heads = limits::HEADS.check(&origin, self.num_attention_heads)?;
        let kv_heads =
            limits::KV_HEADS.check(&origin, self.num_key_value_heads.unwrap_or(heads))?;
        if let Some(d) = self.head_dim {
            limits::HEAD_DIM.check(&origin, d)?;
        }
        if !heads.is_multiple_of(kv_heads) {
            return Err(unsupported(
                "num_key_value_heads",
                kv_heads.to_string(),
                "num_key_value_heads dividing num_attention_heads",
            ));
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / heads);
        if !head_dim.is_multiple_of(2) {
            return Err(unsupported(
                "head_dim",
                head_dim.to_string(),
                "an even head_dim",
            ));
        }
        Ok(DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope: RopeConfig {
                theta: self.resolved_theta(default_theta),
                head_dim,
                scaling: self.rope_scaling(path)?,
            },
            max_position_embeddings: self.max_position_embeddings,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            sliding_windows: vec![None; self.num_hidden_layers],
            options: ArchOptions {
                activation,
                ..ArchOptions::default()
            },
        })
    }

    fn resolved_theta(&self, default: f64) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(default)
    }

    fn rope_scaling(&self, path: &Path) -> Result<RopeScaling> {
        let Some(obj) = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) else {
            return Ok(RopeScaling::Default);
        };
        if obj.is_null() {
            return Ok(RopeScaling::Default);
        }
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |field: &'static str| -> Result<f64> {
            obj.get(field)
                .and_then(Value::as_f64)
                .ok_or_else(|| CoreError::UnsupportedConfig {
                    path: path.to_path_buf(),
                    field: "rope_scaling",
                    value: format!("{obj} (no number `{field}`)"),
                    supported: "rope_scaling with rope_type \"llama3\" and its four numbers",
                })
        };
        match kind {
            "default" => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            }),
            other => Err(CoreError::UnsupportedConfig {
                path: path.to_path_buf(),
                field: "rope_scaling.rope_type",
                value: format!("{other:?}"),
                supported: "rope_type \"default\", \"linear\" and \"llama3\" (not yet dynamic, yarn or longrope)",
            }),
        }
    }
}

/// Everything clo needs from a model's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub decoder: DecoderConfig,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's storage dtype as config.json states it (`float32`, `bfloat16`, ...).
    pub torch_dtype: Option<String>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_to_string(path, "model config")?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| CoreError::json(path, &e, "config.json must be a JSON object"))?;
        Self::from_value(path, value)
    }

    /// The config of a model directory (its config.json) or of a GGUF file (its metadata).
    pub fn of_model(model: &Path) -> Result<Self> {
        if crate::load::gguf::is_gguf(model) && model.is_file() {
            crate::load::gguf::model_config(model)
        } else {
            Self::from_file(&model.join("config.json"))
        }
    }

    /// Validates a config in config.json's form; `path` names its source in errors.
    pub fn from_value(path: &Path, value: Value) -> Result<Self> {
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| CoreError::UnsupportedConfig {
                path: path.to_path_buf(),
                field: "model_type",
                value: value
                    .get("model_type")
                    .map_or("(missing)".into(), Value::to_string),
                supported: Family::MODEL_TYPES,
            })?;
        let parse_err = |e: serde_json::Error| {
            CoreError::json(
                path,
                &e,
                "config.json lacks a field every Llama-family config has",
            )
        };
        let (family, common, decoder) = match model_type {
            "llama" => {
                let c: llama::LlamaConfig = serde_json::from_value(value).map_err(parse_err)?;
                (Family::Llama, c.common.clone(), c.into_config(path)?)
            }
            "mistral" => {
                let c: mistral::MistralConfig = serde_json::from_value(value).map_err(parse_err)?;
                (Family::Mistral, c.common.clone(), c.into_config(path)?)
            }
            "qwen2" => {
                let c: qwen2::Qwen2Config = serde_json::from_value(value).map_err(parse_err)?;
                (Family::Qwen2, c.common.clone(), c.into_config(path)?)
            }
            "qwen3" => {
                let c: qwen3::Qwen3Config = serde_json::from_value(value).map_err(parse_err)?;
                (Family::Qwen3, c.common.clone(), c.into_config(path)?)
            }
            "gemma2" => {
                let c: gemma::GemmaConfig = serde_json::from_value(value).map_err(parse_err)?;
                (Family::Gemma2, c.common.clone(), c.into_config(path, 2)?)
            }
            "gemma3_text" => {
                let c: gemma::GemmaConfig = serde_json::from_value(value).map_err(parse_err)?;
                (
                    Family::Gemma3Text,
                    c.common.clone(),
                    c.into_config(path, 6)?,
                )
            }
            other => {
                return Err(CoreError::UnsupportedConfig {
                    path: path.to_path_buf(),
                    field: "model_type",
                    value: format!("{other:?}"),
                    supported: Family::MODEL_TYPES,
                });
            }
        };
        crate::limits::check_decoder(&decoder, path.display())?;
        Ok(ModelConfig {
            family,
            decoder,
            bos_token_id: common
                .bos_token_id
                .and_then(|ids| ids.to_vec().first().copied()),
            eos_token_ids: common
                .eos_token_id
                .map(|ids| ids.to_vec())
                .unwrap_or_default(),
            torch_dtype: common.dtype.or(common.torch_dtype),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        ModelConfig::from_file(&path)
    }

    const BASE: &str = r#""vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5"#;

    #[test]
    fn unknown_model_type_is_refused_by_name() {
        let err = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`model_type` = \"gpt2\""), "{err}");
        assert!(err.contains("\"llama\""), "{err}");
    }

    #[test]
    fn unsupported_rope_scaling_names_field_and_value() {
        let err = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`rope_scaling.rope_type` = \"yarn\""), "{err}");
    }

    #[test]
    fn unsupported_activation_is_refused() {
        let err = parse(&format!(
            r#"{{"model_type": "mistral", {BASE}, "hidden_act": "gelu"}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`hidden_act` = \"gelu\""), "{err}");
    }

    #[test]
    fn missing_field_names_file_and_field() {
        let err = parse(r#"{"model_type": "llama", "hidden_size": 16}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json: missing field `vocab_size`"),
            "{err}"
        );
        let err = parse(
            r#"{"model_type": "llama",
            "hidden_size": 16,}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("config.json:2:"),
            "syntax errors carry line and column: {err}"
        );
    }

    #[test]
    fn qwen2_has_qkv_bias_and_layer_windows() {
        let c = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "use_sliding_window": true, "sliding_window": 8,
                "max_window_layers": 1, "tie_word_embeddings": true, "eos_token_id": [5, 6]}}"#
        ))
        .unwrap();
        assert!(c.decoder.qkv_bias && !c.decoder.o_bias);
        assert_eq!(c.decoder.sliding_windows, vec![None, Some(8)]);
        assert!(c.decoder.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![5, 6]);
    }

    #[test]
    fn transformers5_rope_parameters_are_read() {
        let c = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_parameters": {{"rope_type": "llama3",
                "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        assert_eq!(c.decoder.rope.theta, 500000.0);
        assert!(matches!(
            c.decoder.rope.scaling,
            RopeScaling::Llama3 { factor: 8.0, .. }
        ));
    }
}
