//! How much memory training takes: what `metrics.jsonl` reports as `peak_mem_bytes`.

use burn::tensor::Device;
use serde::Serialize;

use crate::load::models::{AttentionKind, DecoderConfig};
use crate::load::trainable::TrainableKind;

/// Peak memory on `device` so far, in bytes: the device allocator's reserved bytes where the
/// backend keeps a memory pool (wgpu; pools are kept, so this is their high-water mark), else
/// the process's peak resident set (the CPU backend, on Linux).
pub fn peak_bytes(device: &Device) -> Option<u64> {
    match device.memory_pool_usage() {
        Some(usage) => Some(usage.bytes_reserved),
        None => process_peak_rss(),
    }
}

/// The largest [`peak_bytes`] of several devices (data parallelism: the fullest device).
pub fn peak_bytes_of(devices: &[Device]) -> Option<u64> {
    devices.iter().filter_map(peak_bytes).max()
}

/// This process's peak resident set size (`VmHWM` of `/proc/self/status`), in bytes; `None`
/// off Linux.
pub fn process_peak_rss() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// What a training step's peak memory is made of, in bytes: a model of it (see
/// [`train_memory`]). Each field is one term; `total` is their sum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryEstimate {
    /// Every weight, the frozen ones in their storage type.
    pub weights: f64,
    /// Gradients and AdamW's two moments of what trains (f32).
    pub optimizer: f64,
    /// Activations kept for the backward pass: every layer's, or with per-layer checkpoints
    /// each layer's input plus one layer's activations.
    pub activations: f64,
    /// The output layer's `[rows, positions, vocab]` tensors while log-probs are formed
    /// (the whole sequence, or a chunk of positions).
    pub head: f64,
    /// The process itself (code, allocator, tokenizer, batch): a constant.
    pub process: f64,
    pub total: f64,
}

/// What a training step holds memory for, besides the model's shape: its batch and the
/// settings that change what is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepShape {
    /// Sequences per micro-batch (4 per CLO quadruple, 2 per DPO pair, 1 per SFT pair).
    pub rows: usize,
    /// Tokens per sequence (the batch's longest).
    pub seq: usize,
    pub trainable: TrainableKind,
    pub lora_rank: usize,
    /// Bytes per frozen weight (4 for f32, 2 for f16/bf16).
    pub stored_bytes: usize,
    pub grad_checkpoint: bool,
    pub logp_chunk: usize,
    pub attention: AttentionKind,
}

/// The memory model of a training step on `rows` rows of `seq` tokens (f32 activations).
///
/// Per token and layer, the activations a backward pass needs are counted as
/// `6 h + 3 q + 2 kv + 4 i` values (norm inputs and outputs, projections, the MLP's gate, up,
/// activation and product) plus, for attention, `3 heads x seq` (scores, masked scores,
/// probabilities) when it is materialised, or `heads` (one log-sum-exp per query and head) when
/// it is memory-efficient; with per-layer checkpoints, each layer's input and one layer's
/// activations. The output layer holds one `[rows, positions, vocab]` tensor: the logits, which
/// the fused log-probs of `clo-shaders` keep for their backward and overwrite with their
/// gradient. Trainable weights keep f32 values,
/// gradients and AdamW's two moments (16 bytes each). The coefficients are counts of what the
/// code keeps, fitted to peaks measured on the CPU (`clo bench train` prints both; the
/// README's Memory section lists them); they do not model a GPU allocator's pools.
pub fn train_memory(config: &DecoderConfig, step: &StepShape) -> MemoryEstimate {
    let StepShape {
        rows,
        seq,
        trainable,
        lora_rank,
        stored_bytes,
        grad_checkpoint,
        logp_chunk,
        attention,
    } = *step;
    // In f64 from the start: the products of a large model's sizes pass 2^32 (wasm's usize).
    let f = |x: usize| x as f64;
    let (h, i, l, v) = (
        f(config.hidden_size),
        f(config.intermediate_size),
        f(config.num_layers),
        f(config.vocab_size),
    );
    let q = f(config.num_heads) * f(config.head_dim);
    let kv = f(config.num_kv_heads) * f(config.head_dim);
    let total_params = config.parameter_count() as f64;
    let attention_weights = l * (2.0 * h * q + 2.0 * h * kv);
    let trained = match trainable {
        TrainableKind::Full => total_params,
        TrainableKind::Attention => attention_weights,
        // Adapters on q, k, v, o (the default targets): r x (in + out) each.
        TrainableKind::Lora => l * f(lora_rank) * (2.0 * (h + q) + 2.0 * (h + kv)),
    };
    let frozen = match trainable {
        TrainableKind::Lora => total_params,
        _ => total_params - trained,
    };
    let weights = frozen * f(stored_bytes) + trained * 4.0;
    let optimizer = trained * 12.0;
    let tokens = f(rows) * f(seq);
    let scores = match attention {
        AttentionKind::Materialized => 3.0 * f(config.num_heads) * f(seq),
        AttentionKind::MemoryEfficient => f(config.num_heads),
    };
    // SwiGLU through `clo_shaders::swiglu` keeps its two inputs; GeGLU's tensor ops four.
    let mlp = match config.options.activation {
        crate::load::models::Activation::GeluTanh => 4.0 * i,
        _ => 2.0 * i,
    };
    let per_layer = tokens * (6.0 * h + 3.0 * q + 2.0 * kv + mlp + scores) * 4.0;
    let activations = if grad_checkpoint {
        // Each layer's input, and one layer's activations.
        (l + 1.0) * tokens * h * 4.0 + per_layer
    } else {
        l * per_layer
    };
    let positions = if logp_chunk > 0 {
        logp_chunk.min(seq)
    } else {
        seq
    };
    let head = f(rows) * f(positions) * v * 4.0;
    let process = 0.25 * (1u64 << 30) as f64;
    MemoryEstimate {
        weights,
        optimizer,
        activations,
        head,
        process,
        total: weights + optimizer + activations + head + process,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_reports_the_process_peak() {
        let before = peak_bytes(&Device::flex());
        if cfg!(target_os = "linux") {
            let before = before.expect("VmHWM on Linux");
            // Touch 64 MiB: the high-water mark grows by about that much.
            let block = vec![1u8; 64 << 20];
            std::hint::black_box(&block);
            let after = peak_bytes(&Device::flex()).unwrap();
            assert!(after >= before + (60 << 20), "{before} -> {after}");
        }
    }
}
