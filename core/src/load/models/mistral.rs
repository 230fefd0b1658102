//! Mistral 7B and kin (`model_type = "mistral"`).
//!
//! Reference: `transformers/models/mistral/modeling_mistral.py`. Llama's architecture without
//! biases, with an optional sliding attention window on every layer (`sliding_window`; null in
//! v0.2 and later) and an explicit `head_dim` in some releases.

use std::path::Path;

use serde::Deserialize;

use super::{DecoderConfig, HfCommon};
use crate::error::Result;

/// `config.json` of a Mistral checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct MistralConfig {
    #[serde(flatten)]
    pub common: HfCommon,
    pub sliding_window: Option<usize>,
}

impl MistralConfig {
    pub fn into_config(self, path: &Path) -> Result<DecoderConfig> {
        let mut config = self.common.decoder(path, 10_000.0)?;
        config.sliding_windows = vec![self.sliding_window; config.num_layers];
        Ok(config)
    }
}
