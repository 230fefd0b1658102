//! A decoder block (attention and a gated MLP, with their norms and residuals) and the
//! projections every layer and the LM head go through.

use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::activation::tanh;

use super::attention::{Attention, Visible};

/// A projection `x W + bias`. With a LoRA adapter on `W` (a `[in, rank]`, b `[rank, out]`, scale
/// s) it is `x W + s (x a) b`: the low-rank path runs on the activations, and the `[in, out]`
/// sum `W + s a b` that Burn's reparameterized weight composes on every forward (and its
/// gradient) is never formed. `W` is the frozen base; the gradients reach `a` and `b`.
///
/// Weights stored in half precision (`--dtype`, see `precision.rs`) go through
/// [`linear_stored`].
pub(super) fn project<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let bias = layer.bias.as_ref().map(|b| b.val());
    match layer.weight.adapter() {
        None => linear_stored(x, layer.weight.base(), bias),
        Some(lora) => {
            let low = linear_stored(
                linear_stored(x.clone(), lora.a.val(), None),
                lora.b.val(),
                None,
            );
            linear_stored(x, layer.weight.base(), bias) + low * lora.scale
        }
    }
}

/// `x w (+ bias)` with `w` in its storage type: when that is not `x`'s (`--dtype`), `x` is cast
/// to it and the product back to `x`'s type, and the bias (f32) is added there.
pub(super) fn linear_stored<const D: usize>(
    x: Tensor<D>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    use burn::tensor::module::linear;
    let (stored, compute) = (w.dtype(), x.dtype());
    if stored == compute {
        return linear(x, w, bias);
    }
    let y = linear(x.cast(stored), w, None).cast(compute);
    match bias {
        Some(b) => y + b.unsqueeze(),
        None => y,
    }
}

/// `cap * tanh(x / cap)`: Gemma 2's soft capping of attention scores and logits.
pub(super) fn soft_cap<const D: usize>(x: Tensor<D>, cap: f64) -> Tensor<D> {
    tanh(x / cap) * cap
}

/// The tanh approximation of GELU, as PyTorch's `gelu(approximate="tanh")`.
fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (tanh(inner) + 1.0) * 0.5
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// GeGLU (Gemma) instead of SwiGLU.
    pub(super) gelu_tanh: bool,
}

impl Mlp {
    /// SwiGLU `down(silu(gate(x)) * up(x))`, or GeGLU with GELU for SiLU;
    /// `[.., hidden] -> [.., hidden]`.
    pub(super) fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = project(&self.gate_proj, x.clone());
        let up = project(&self.up_proj, x);
        let hidden = if self.gelu_tanh {
            gelu_tanh(gate) * up
        } else {
            // One operation whose backward keeps `gate` and `up` only (`clo_shaders::swiglu`).
            clo_shaders::swiglu(gate, up)
        };
        project(&self.down_proj, hidden)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    /// Llama: the norm before the MLP. Gemma: the norm of the attention output.
    pub post_attention_layernorm: RmsNorm,
    /// Gemma only: the norms before and after the MLP.
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    pub post_feedforward_layernorm: Option<RmsNorm>,
}

impl DecoderLayer {
    /// One block: attention and MLP with their residuals.
    pub(super) fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        visible: &Visible,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
    ) -> Tensor<3> {
        let attn = (self.self_attn).forward(
            self.input_layernorm.forward(x.clone()),
            cos,
            sin,
            visible,
            cache,
        );
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let x = x + self.post_attention_layernorm.forward(attn);
                x.clone() + post.forward(self.mlp.forward(pre.forward(x)))
            }
            _ => {
                let x = x + attn;
                x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
            }
        }
    }
}
