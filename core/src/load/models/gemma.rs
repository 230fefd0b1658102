//! Gemma 2 (`model_type = "gemma2"`) and Gemma 3's text model (`model_type = "gemma3_text"`).
//!
//! References: `transformers/models/gemma2/modeling_gemma2.py` and
//! `transformers/models/gemma3/modeling_gemma3.py`. The Llama block with:
//! - GeGLU (`hidden_activation = "gelu_pytorch_tanh"`);
//! - four RMSNorms per layer (before and after attention and MLP), each `x * (1 + w)`;
//! - embeddings scaled by `sqrt(hidden_size)`, tied LM head;
//! - scores scaled by `query_pre_attn_scalar^-0.5`, explicit `head_dim`;
//! - sliding-window and global layers (`layer_types`, or every `sliding_window_pattern`-th layer
//!   global: 2 for Gemma 2, 6 for Gemma 3);
//! - Gemma 2: tanh soft-capping of attention scores and logits;
//! - Gemma 3: q/k RMSNorm, a separate RoPE base for sliding layers (`rope_local_base_freq`, or
//!   transformers 5's `rope_parameters.sliding_attention`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Activation, DecoderConfig, HfCommon};
use crate::error::{CoreError, Result};

/// `config.json` of a Gemma 2 or Gemma 3 text checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct GemmaConfig {
    #[serde(flatten)]
    pub common: HfCommon,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub sliding_window: Option<usize>,
    pub sliding_window_pattern: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub rope_local_base_freq: Option<f64>,
}

impl GemmaConfig {
    /// `pattern`: every `pattern`-th layer is global when config.json has no `layer_types`
    /// (2 for Gemma 2, 6 for Gemma 3). Gemma 3 is told apart by its pattern: it has q/k norms
    /// and a local RoPE base.
    pub fn into_config(mut self, path: &Path, pattern: usize) -> Result<DecoderConfig> {
        let gemma3 = pattern == 6;
        let mut local_theta = self.rope_local_base_freq;
        // transformers 5 nests RoPE per attention type.
        if let Some(params) = self.common.rope_parameters.clone()
            && params.get("full_attention").is_some()
        {
            self.common.rope_parameters = params.get("full_attention").cloned();
            local_theta = local_theta.or_else(|| {
                params
                    .get("sliding_attention")?
                    .get("rope_theta")
                    .and_then(Value::as_f64)
            });
        }
        if self.common.hidden_activation.is_none() && self.common.hidden_act == "silu" {
            // Gemma's default when neither field is written.
            self.common.hidden_activation = Some("gelu_pytorch_tanh".into());
        }
        let default_theta = if gemma3 { 1_000_000.0 } else { 10_000.0 };
        let mut config = self.common.decoder(path, default_theta)?;
        let n = config.num_layers;
        let sliding: Vec<bool> = match &self.layer_types {
            Some(types) => {
                if types.len() != n {
                    return Err(CoreError::UnsupportedConfig {
                        path: path.to_path_buf(),
                        field: "layer_types",
                        value: format!("{} entries", types.len()),
                        supported: "one entry per layer (num_hidden_layers)",
                    });
                }
                types.iter().map(|t| t == "sliding_attention").collect()
            }
            None => {
                let p = self.sliding_window_pattern.unwrap_or(pattern).max(1);
                (0..n).map(|i| (i + 1) % p != 0).collect()
            }
        };
        config.sliding_windows = sliding
            .iter()
            .map(|&s| s.then_some(self.sliding_window).flatten())
            .collect();
        config.tie_word_embeddings = true;
        let opts = &mut config.options;
        if opts.activation != Activation::GeluTanh {
            tracing::warn!(path = %path.display(), "a Gemma config with a SiLU MLP");
        }
        opts.sandwich_norms = true;
        opts.norm_weight_offset = true;
        opts.embed_scale = Some((config.hidden_size as f64).sqrt());
        opts.query_pre_attn_scalar = self.query_pre_attn_scalar.or(Some(256.0));
        opts.attn_logit_softcap = self.attn_logit_softcapping;
        opts.final_logit_softcap = self.final_logit_softcapping;
        if gemma3 {
            opts.qk_norm = true;
            opts.local_rope_theta = Some(local_theta.unwrap_or(10_000.0));
        }
        Ok(config)
    }
}
