//! Qwen2 and Qwen2.5 (`model_type = "qwen2"`).
//!
//! Reference: `transformers/models/qwen2/modeling_qwen2.py`. Bias on the q, k and v projections
//! (not o), embeddings often tied (`tie_word_embeddings`), and, when `use_sliding_window`, a
//! sliding window on the layers from `max_window_layers` on.

use std::path::Path;

use serde::Deserialize;

use super::{DecoderConfig, HfCommon};
use crate::error::Result;

/// `config.json` of a Qwen2/Qwen2.5 checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2Config {
    #[serde(flatten)]
    pub common: HfCommon,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
    pub max_window_layers: Option<usize>,
}

impl Qwen2Config {
    pub fn into_config(self, path: &Path) -> Result<DecoderConfig> {
        let mut config = self.common.decoder(path, 10_000.0)?;
        config.qkv_bias = true;
        if self.use_sliding_window {
            let first = self.max_window_layers.unwrap_or(config.num_layers);
            config.sliding_windows = (0..config.num_layers)
                .map(|i| {
                    if i >= first {
                        self.sliding_window
                    } else {
                        None
                    }
                })
                .collect();
        }
        Ok(config)
    }
}
