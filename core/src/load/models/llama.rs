//! Llama 2 and Llama 3/3.1/3.2 (`model_type = "llama"`).
//!
//! Reference: `transformers/models/llama/modeling_llama.py`. Optional biases on the attention
//! (`attention_bias`, all four projections) and the MLP (`mlp_bias`); RoPE scaling of type
//! `llama3` for Llama 3.1+.

use std::path::Path;

use serde::Deserialize;

use super::{DecoderConfig, HfCommon};
use crate::error::Result;

/// `config.json` of a Llama checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(flatten)]
    pub common: HfCommon,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

impl LlamaConfig {
    pub fn into_config(self, path: &Path) -> Result<DecoderConfig> {
        let mut config = self.common.decoder(path, 10_000.0)?;
        config.qkv_bias = self.attention_bias;
        config.o_bias = self.attention_bias;
        config.mlp_bias = self.mlp_bias;
        Ok(config)
    }
}
