//! The decoder shared by the Llama family (Llama 2/3, Mistral, Qwen2/2.5/3, Gemma 2/3): pre-norm
//! blocks of grouped-query attention with RoPE and a gated MLP, RMSNorm, and a language-model head
//! that may be tied to the embeddings. The families differ only in [`DecoderConfig`] (and its
//! [`ArchOptions`]), which each family's file builds from its `config.json`.
//!
//! Module paths mirror Hugging Face's tensor names (`model.layers.0.self_attn.q_proj`), so
//! LoRA targets and freezing patterns read like PEFT's.

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

use super::rope::RopeConfig;

mod attention;
mod block;

pub use self::attention::{Attention, AttentionKind};
use self::attention::{Visible, attention_mask};
pub use self::block::{DecoderLayer, Mlp};
use self::block::{linear_stored, project, soft_cap};

/// Architecture of a Llama-family decoder, independent of the checkpoint format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    /// Bias on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on gate, up and down projections.
    pub mlp_bias: bool,
    /// The LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Per layer: attend only to this many most recent positions (Mistral, Qwen2 SWA, Gemma).
    pub sliding_windows: Vec<Option<usize>>,
    /// What Qwen3 and Gemma add to the Llama block (all off for Llama, Mistral, Qwen2).
    #[serde(default)]
    pub options: ArchOptions,
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SwiGLU (`hidden_act = "silu"`).
    #[default]
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`, Gemma).
    GeluTanh,
}

/// Departures from the Llama block, each named after what it does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchOptions {
    pub activation: Activation,
    /// RMSNorm over each query and key head before RoPE (`q_norm`, `k_norm`: Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma's four norms per layer: `post_attention_layernorm` normalises the attention output
    /// before the residual, and `pre_feedforward_layernorm` / `post_feedforward_layernorm`
    /// wrap the MLP.
    pub sandwich_norms: bool,
    /// Checkpoints store RMSNorm weights as `w - 1` (Gemma: `x * (1 + w)`). clo adds 1 on load
    /// and subtracts it on save, so the module computes `x * gamma` like every other family.
    pub norm_weight_offset: bool,
    /// Embeddings are multiplied by this (Gemma: `sqrt(hidden_size)`).
    pub embed_scale: Option<f64>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    /// `cap * tanh(scores / cap)` on attention scores (Gemma 2).
    pub attn_logit_softcap: Option<f64>,
    /// `cap * tanh(logits / cap)` on the final logits (Gemma 2).
    pub final_logit_softcap: Option<f64>,
    /// RoPE base of the sliding-window layers, when it differs (Gemma 3's `rope_local_base_freq`).
    pub local_rope_theta: Option<f64>,
}

impl DecoderConfig {
    /// A model with lazily initialised parameters, ready for a checkpoint to fill.
    pub fn init(&self, device: &Device) -> CausalLm {
        self.init_with(device, None)
    }

    /// A model with random weights close to how transformers initialises a fresh model: every
    /// linear matrix (and bias) and the embeddings from `N(0, std)` (`initializer_range`, 0.02
    /// in most configs), norms one. Logits then start near uniform, as in a real checkpoint, instead of the
    /// huge ones Burn's default (Kaiming) initialisation gives.
    pub fn init_random(&self, device: &Device, std: f64) -> CausalLm {
        self.init_with(
            device,
            Some(burn::nn::Initializer::Normal { mean: 0.0, std }),
        )
    }

    fn init_with(&self, device: &Device, weights: Option<burn::nn::Initializer>) -> CausalLm {
        let linear = |d_in, d_out, bias| {
            let config = LinearConfig::new(d_in, d_out).with_bias(bias);
            match &weights {
                Some(init) => config.with_initializer(init.clone()).init(device),
                None => config.init(device),
            }
        };
        let norm_of = |dim| {
            RmsNormConfig::new(dim)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let norm = || norm_of(self.hidden_size);
        let opts = &self.options;
        let head_norm = || opts.qk_norm.then(|| norm_of(self.head_dim));
        let sandwich = || opts.sandwich_norms.then(norm);
        let (h, q_dim, kv_dim) = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let layers = (0..self.num_layers)
            .map(|i| DecoderLayer {
                self_attn: Attention {
                    q_proj: linear(h, q_dim, self.qkv_bias),
                    k_proj: linear(h, kv_dim, self.qkv_bias),
                    v_proj: linear(h, kv_dim, self.qkv_bias),
                    o_proj: linear(q_dim, h, self.o_bias),
                    num_heads: self.num_heads,
                    num_kv_heads: self.num_kv_heads,
                    head_dim: self.head_dim,
                    sliding_window: self.sliding_windows[i].unwrap_or(0),
                    q_norm: head_norm(),
                    k_norm: head_norm(),
                    scale: opts
                        .query_pre_attn_scalar
                        .unwrap_or(self.head_dim as f64)
                        .powf(-0.5),
                    softcap: opts.attn_logit_softcap.unwrap_or(0.0),
                    local_rope: self.sliding_windows[i].is_some()
                        && opts.local_rope_theta.is_some(),
                },
                mlp: Mlp {
                    gate_proj: linear(h, self.intermediate_size, self.mlp_bias),
                    up_proj: linear(h, self.intermediate_size, self.mlp_bias),
                    down_proj: linear(self.intermediate_size, h, self.mlp_bias),
                    gelu_tanh: opts.activation == Activation::GeluTanh,
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
                pre_feedforward_layernorm: sandwich(),
                post_feedforward_layernorm: sandwich(),
            })
            .collect();
        CausalLm {
            model: DecoderStack {
                embed_tokens: match &weights {
                    Some(init) => EmbeddingConfig::new(self.vocab_size, h)
                        .with_initializer(init.clone())
                        .init(device),
                    None => EmbeddingConfig::new(self.vocab_size, h).init(device),
                },
                layers,
                norm: norm(),
            },
            lm_head: (!self.tie_word_embeddings).then(|| linear(h, self.vocab_size, false)),
            embed_scale: opts.embed_scale.unwrap_or(1.0),
            final_softcap: opts.final_logit_softcap.unwrap_or(0.0),
            rope: self.rope.clone(),
            local_rope: self.local_rope(),
            rope_tables: RopeTables::default(),
            local_rope_tables: RopeTables::default(),
            attention: AttentionKind::default(),
        }
    }

    /// The RoPE of layers with a sliding window, when it differs from [`Self::rope`].
    pub fn local_rope(&self) -> Option<RopeConfig> {
        self.options.local_rope_theta.map(|theta| RopeConfig {
            theta,
            head_dim: self.head_dim,
            scaling: super::rope::RopeScaling::Default,
        })
    }

    /// Number of parameters, counting tied embeddings once.
    pub fn num_parameters(&self) -> usize {
        self.parameter_count() as usize
    }

    /// [`Self::num_parameters`] in `u64`, which a large model's count fits on every target
    /// (wasm's `usize` is 32 bits).
    pub fn parameter_count(&self) -> u64 {
        let u = |x: usize| x as u64;
        let (h, i, v) = (
            u(self.hidden_size),
            u(self.intermediate_size),
            u(self.vocab_size),
        );
        let (q, kv) = (
            u(self.num_heads) * u(self.head_dim),
            u(self.num_kv_heads) * u(self.head_dim),
        );
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.qkv_bias { q + 2 * kv } else { 0 }
            + if self.o_bias { h } else { 0 };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let head_norms = if self.options.qk_norm {
            2 * u(self.head_dim)
        } else {
            0
        };
        let norms = if self.options.sandwich_norms { 4 } else { 2 } * h;
        let layer = attn + head_norms + mlp + norms;
        let head = if self.tie_word_embeddings { 0 } else { h * v };
        v * h + u(self.num_layers) * layer + h + head
    }
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    // Per layer: [batch, kv_heads, seen, head_dim] keys and values.
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Per row, how many leading positions are padding (empty: none). Padding keys are never
    /// attended to, and a row's positions (for RoPE) count from its first real token.
    padding: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            padding: Vec::new(),
        }
    }

    /// An empty cache for a batch of left-padded rows: row `b` starts with `padding[b]`
    /// padding tokens. Used for batched generation of prompts of different lengths.
    pub fn with_left_padding(num_layers: usize, padding: Vec<usize>) -> Self {
        Self {
            layers: vec![None; num_layers],
            padding,
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    /// True when no position has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Module, Debug)]
pub struct DecoderStack {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

/// A Llama-family causal language model.
#[derive(Module, Debug)]
pub struct CausalLm {
    pub model: DecoderStack,
    /// `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Linear>,
    /// Factor of the embeddings (1: none; Gemma: `sqrt(hidden)`).
    embed_scale: f64,
    /// Soft cap of the logits (0: none).
    final_softcap: f64,
    /// The model's RoPE; its cos/sin tables are computed once per device (and grown when a
    /// longer position is asked for), then indexed by position at each forward pass.
    #[module(skip)]
    rope: RopeConfig,
    /// The RoPE of layers marked `local_rope`, when it differs (Gemma 3).
    #[module(skip)]
    local_rope: Option<RopeConfig>,
    #[module(skip)]
    rope_tables: RopeTables,
    #[module(skip)]
    local_rope_tables: RopeTables,
    /// How attention is computed (memory-efficient unless set otherwise).
    #[module(skip)]
    attention: AttentionKind,
}

/// A RoPE's cos and sin for positions `0..len`, one per device (plain and autodiff apart).
#[derive(Debug, Clone)]
struct RopeTable {
    device: Device,
    autodiff: bool,
    len: usize,
    cos: Tensor<2>,
    sin: Tensor<2>,
}

/// The tables of one RoPE, shared by the clones of a model (the autodiff model and its
/// `valid()` twin keep theirs apart by device).
#[derive(Debug, Clone, Default)]
pub struct RopeTables(std::sync::Arc<std::sync::Mutex<Vec<RopeTable>>>);

impl RopeTables {
    /// cos and sin, `[len >= needed, head_dim]` each, for positions from 0, on `device`: computed
    /// on the device the first time (`position x inv_freq` in f32, as Hugging Face does, then
    /// cos and sin), and again, twice as long, when a later call needs more positions.
    fn get(&self, rope: &RopeConfig, needed: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let autodiff = device.is_autodiff();
        let mut tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables
            .iter()
            .find(|t| &t.device == device && t.autodiff == autodiff && t.len >= needed)
        {
            return (t.cos.clone(), t.sin.clone());
        }
        let len = needed.next_power_of_two().max(64);
        let inv_freq: Vec<f32> = rope.inv_freq().into_iter().map(|f| f as f32).collect();
        let half = inv_freq.len();
        let inv_freq = Tensor::<2>::from_data(TensorData::new(inv_freq, [1, half]), device);
        let positions = Tensor::<1, Int>::arange(0..len as i64, device)
            .float()
            .reshape([len, 1]);
        let angles = positions.expand([len, half]) * inv_freq.expand([len, half]);
        let angles = Tensor::cat(vec![angles.clone(), angles], 1); // HF's cat((freqs, freqs))
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        tables.retain(|t| !(&t.device == device && t.autodiff == autodiff));
        tables.push(RopeTable {
            device: device.clone(),
            autodiff,
            len,
            cos: cos.clone(),
            sin: sin.clone(),
        });
        (cos, sin)
    }
}

impl CausalLm {
    /// The device the model's weights live on.
    pub fn device(&self) -> Device {
        self.model.embed_tokens.weight.device()
    }

    /// Adds `delta` to every RMSNorm weight: +1 turns Gemma's stored `w` (used as `1 + w`) into
    /// the `gamma` this module multiplies by, -1 turns it back for saving.
    pub fn shift_norm_weights(mut self, delta: f64) -> Self {
        fn shift(norm: &mut RmsNorm, delta: f64) {
            norm.gamma = norm.gamma.clone().map(|g| g.add_scalar(delta));
        }
        for layer in &mut self.model.layers {
            shift(&mut layer.input_layernorm, delta);
            shift(&mut layer.post_attention_layernorm, delta);
            let attn = &mut layer.self_attn;
            let extra = [
                &mut layer.pre_feedforward_layernorm,
                &mut layer.post_feedforward_layernorm,
                &mut attn.q_norm,
                &mut attn.k_norm,
            ];
            for norm in extra.into_iter().flatten() {
                shift(norm, delta);
            }
        }
        shift(&mut self.model.norm, delta);
        self
    }

    /// Logits of every position. With a cache, `ids` continue the cached positions and the
    /// cache is extended.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]`
    /// - output: `[batch, seq, vocab]`
    pub fn forward(&self, ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let hidden = self.hidden_states(ids, cache);
        self.logits(hidden)
    }

    /// The model with attention computed as `kind` says.
    pub fn with_attention(mut self, kind: AttentionKind) -> Self {
        self.attention = kind;
        self
    }

    /// The model's RoPE parameters.
    pub fn rope(&self) -> &RopeConfig {
        &self.rope
    }

    /// Final hidden states after the last norm.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn hidden_states(&self, ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, seq] = ids.dims();
        let device = ids.device();
        let mut scratch;
        let cache = match cache {
            Some(c) => c,
            None => {
                scratch = KvCache::new(self.model.layers.len());
                &mut scratch
            }
        };
        let pass = self.pass(seq, cache.len(), &cache.padding, &device);
        let mut x = self.embed(ids); // [b, seq, hidden]
        for (i, slot) in cache.layers.iter_mut().enumerate() {
            x = self.layer(i, x, &pass, slot);
        }
        self.model.norm.forward(x)
    }

    /// The token embeddings (scaled as the model scales them).
    ///
    /// # Shapes
    /// - ids: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let x = self.model.embed_tokens.forward(ids);
        // Embeddings stored in half precision come out in f32.
        let x = if x.dtype() != DType::F32 {
            x.cast(FloatDType::F32)
        } else {
            x
        };
        if self.embed_scale != 1.0 {
            // Gemma rounds the factor to the weights' dtype; f32 here.
            x * (self.embed_scale as f32) as f64
        } else {
            x
        }
    }

    /// The last norm, applied to the last layer's output.
    pub fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        self.model.norm.forward(x)
    }

    /// Decoder layers.
    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    /// What every layer of a forward pass of `seq` positions after `start` cached ones shares:
    /// the RoPE rows, and one mask per distinct sliding window.
    fn pass(&self, seq: usize, start: usize, padding: &[usize], device: &Device) -> Pass {
        let rope = rope_at(
            self.rope_tables.get(&self.rope, start + seq, device),
            start,
            seq,
            padding,
        );
        let local = (self.local_rope.as_ref()).map(|local| {
            rope_at(
                self.local_rope_tables.get(local, start + seq, device),
                start,
                seq,
                padding,
            )
        });
        // One new position (a decoding step) has a `[heads, 1, keys]` score matrix: nothing to
        // save, and one kernel unit per head would walk every key alone.
        let efficient = self.attention == AttentionKind::MemoryEfficient && seq > 1;
        let mut masks: Vec<(usize, Visible)> = Vec::new();
        for layer in &self.model.layers {
            let window = layer.self_attn.sliding_window;
            if !masks.iter().any(|(w, _)| *w == window) {
                let m = attention_mask(seq, start + seq, window, padding, device);
                let visible = if efficient {
                    Visible::Bias(
                        Tensor::<3>::zeros(m.dims(), device).mask_fill(m, f32::NEG_INFINITY),
                    )
                } else {
                    Visible::Mask(m)
                };
                masks.push((window, visible));
            }
        }
        Pass { rope, local, masks }
    }

    /// Layer `i` on `x` within `pass`, with its cache slot.
    fn layer(
        &self,
        i: usize,
        x: Tensor<3>,
        pass: &Pass,
        slot: &mut Option<(Tensor<4>, Tensor<4>)>,
    ) -> Tensor<3> {
        let layer = &self.model.layers[i];
        let window = layer.self_attn.sliding_window;
        let (_, visible) = pass
            .masks
            .iter()
            .find(|(w, _)| *w == window)
            .expect("a mask per window");
        let (cos, sin) = match (&pass.local, layer.self_attn.local_rope) {
            (Some((cos, sin)), true) => (cos, sin),
            _ => (&pass.rope.0, &pass.rope.1),
        };
        layer.forward(x, cos, sin, visible, slot)
    }

    /// Per-layer checkpoints of a training forward pass (no cache, no padding): the input of
    /// every decoder layer and, last, the last layer's output before the final norm
    /// (`num_layers + 1` tensors). Run it on the plain model (`valid()`): no
    /// graph is kept, only these.
    ///
    /// # Shapes
    /// - ids: `[batch, seq]`; each output `[batch, seq, hidden]`
    pub fn layer_inputs(&self, ids: Tensor<2, Int>) -> Vec<Tensor<3>> {
        let [_, seq] = ids.dims();
        let pass = self.training_pass(seq, &ids.device());
        let mut x = self.embed(ids);
        let mut inputs = Vec::with_capacity(self.num_layers() + 1);
        for i in 0..self.num_layers() {
            inputs.push(x.clone());
            x = self.layer(i, x, &pass, &mut None);
        }
        inputs.push(x);
        inputs
    }

    /// The shared part of a training forward pass over `seq` positions (no cache, no padding),
    /// for [`CausalLm::layer_forward`].
    pub fn training_pass(&self, seq: usize, device: &Device) -> Pass {
        self.pass(seq, 0, &[], device)
    }

    /// Decoder layer `i` alone on its input `x`, within a [`CausalLm::training_pass`]: what
    /// per-layer checkpointing recomputes in the backward pass.
    pub fn layer_forward(&self, i: usize, x: Tensor<3>, pass: &Pass) -> Tensor<3> {
        self.layer(i, x, pass, &mut None)
    }
}

/// The RoPE rows and attention masks that every layer of one forward pass shares.
#[derive(Debug, Clone)]
pub struct Pass {
    rope: (Tensor<4>, Tensor<4>),
    local: Option<(Tensor<4>, Tensor<4>)>,
    /// Per sliding window, which keys each query may look at.
    masks: Vec<(usize, Visible)>,
}

/// The rows of RoPE tables for positions `start .. start + seq` (each row's counted from its
/// first real token when rows are left-padded), picked on the device from the cached tables.
///
/// # Shapes
/// - tables: `[len, head_dim]` each; output: `[rows or 1, 1, seq, head_dim]` each
fn rope_at(
    (cos, sin): (Tensor<2>, Tensor<2>),
    start: usize,
    seq: usize,
    padding: &[usize],
) -> (Tensor<4>, Tensor<4>) {
    let device = cos.device();
    let [_, dim] = cos.dims();
    let rows = padding.len().max(1);
    let positions =
        Tensor::<1, Int>::arange(start as i64..(start + seq) as i64, &device).reshape([1, seq]);
    let positions = if padding.is_empty() {
        positions
    } else {
        let pads: Vec<i64> = padding.iter().map(|&p| p as i64).collect();
        let pads = Tensor::<2, Int>::from_data(TensorData::new(pads, [rows, 1]), &device);
        (positions.expand([rows, seq]) - pads.expand([rows, seq])).clamp_min(0)
    };
    let positions = positions.reshape([rows * seq]);
    let shape = [rows, 1, seq, dim];
    (
        cos.select(0, positions.clone()).reshape(shape),
        sin.select(0, positions).reshape(shape),
    )
}

impl CausalLm {
    /// Entries of the vocabulary (the output layer's width).
    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.lazy_shape().dims::<2>()[0]
    }

    /// # Shapes
    /// - hidden: `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let logits = self.raw_logits(hidden);
        if self.final_softcap > 0.0 {
            soft_cap(logits, self.final_softcap)
        } else {
            logits
        }
    }

    fn raw_logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => project(head, hidden),
            None => {
                let [b, s, h] = hidden.dims();
                let weight: Param<Tensor<2>> = self.model.embed_tokens.weight.clone();
                let [vocab, _] = weight.dims();
                linear_stored(hidden.reshape([b * s, h]), weight.val().transpose(), None)
                    .reshape([b, s, vocab])
            }
        }
    }
}

#[cfg(test)]
mod tests;
