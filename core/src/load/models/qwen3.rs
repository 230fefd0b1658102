//! Qwen3 dense models (`model_type = "qwen3"`).
//!
//! Reference: `transformers/models/qwen3/modeling_qwen3.py`. Qwen2's block without the q/k/v
//! bias (`attention_bias`, false in every release) and with an RMSNorm over each query and key
//! head before RoPE (`q_norm`, `k_norm`); explicit `head_dim`; sliding windows as Qwen2.

use std::path::Path;

use serde::Deserialize;

use super::{DecoderConfig, HfCommon};
use crate::error::Result;

/// `config.json` of a Qwen3 checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3Config {
    #[serde(flatten)]
    pub common: HfCommon,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
    pub max_window_layers: Option<usize>,
}

impl Qwen3Config {
    pub fn into_config(self, path: &Path) -> Result<DecoderConfig> {
        let mut config = self.common.decoder(path, 1_000_000.0)?;
        config.qkv_bias = self.attention_bias;
        config.o_bias = self.attention_bias;
        config.options.qk_norm = true;
        if self.use_sliding_window {
            let first = self.max_window_layers.unwrap_or(config.num_layers);
            config.sliding_windows = (0..config.num_layers)
                .map(|i| (i >= first).then_some(self.sliding_window).flatten())
                .collect();
        }
        Ok(config)
    }
}
