//! Rotary position embeddings exactly as Hugging Face's Llama family applies them: the head
//! dimension is split in halves (`rotate_half`), not interleaved in pairs as
//! `burn::nn::RotaryEncoding` does, and Llama 3.1's frequency scaling (`rope_type = "llama3"`)
//! follows `transformers.modeling_rope_utils._compute_llama3_parameters`.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// How the rotary frequencies are scaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type = "default"` or no `rope_scaling`).
    Default,
    /// Positions divided by `factor` (`rope_type = "linear"`, Gemma 3's global layers).
    Linear { factor: f64 },
    /// Llama 3.1 style: low frequencies divided by `factor`, a smooth ramp in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Rotary embedding parameters of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// Base of the geometric frequency progression (`rope_theta`).
    pub theta: f64,
    /// Size of each attention head; RoPE rotates all of it.
    pub head_dim: usize,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// The `head_dim / 2` inverse frequencies, after scaling.
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / dim))
            .collect();
        match self.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_len,
            } => {
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_freq_wavelen {
                            f / factor
                        } else if wavelen < high_freq_wavelen {
                            f
                        } else {
                            let smooth = (old_len / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Cosine and sine tables for the given positions, one row each.
    ///
    /// # Shapes
    /// - both outputs: `[positions.len(), head_dim]`
    pub fn cos_sin_at(&self, positions: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>) {
        // HF computes inv_freq and position * inv_freq in float32; do the same so long
        // positions round alike.
        let inv_freq: Vec<f32> = self.inv_freq().into_iter().map(|f| f as f32).collect();
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * self.head_dim);
        let mut sin = Vec::with_capacity(positions.len() * self.head_dim);
        for &pos in positions {
            let angles: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| (*a as f64).cos() as f32));
                sin.extend(angles.iter().map(|a| (*a as f64).sin() as f32));
            }
        }
        let shape = [positions.len(), 2 * half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Rotates queries or keys by position.
///
/// # Shapes
/// - x: `[batch, heads, seq, head_dim]`
/// - cos, sin: `[batch or 1, 1, seq, head_dim]` (one table per row, or one shared by all)
/// - output: like x
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [_, _, _, head_dim] = x.dims();
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
