//! GGUF, the file format of llama.cpp, Ollama and LM Studio: models in (`--model FILE.gguf`
//! wherever a model directory is accepted) and out (`clo export --gguf`, `--gguf-lora`).
//!
//! Names and layouts follow llama.cpp's `convert_hf_to_gguf.py`:
//! - tensors are renamed (`model.layers.0.self_attn.q_proj.weight` <->
//!   `blk.0.attn_q.weight`) and their dims listed fastest first;
//! - for the `llama` architecture (Llama, Mistral) the rows of q and k are permuted per head
//!   (`permute`), undone on the way in, as transformers does;
//! - Gemma's RMSNorm weights are stored as `1 + w`, which is what clo's norm multiplies by;
//! - the config lives in `{arch}.*` metadata, the tokenizer in `tokenizer.ggml.*`, the chat
//!   template in `tokenizer.chat_template`.

pub mod file;
pub mod quant;
pub mod vocab;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use serde_json::{Value as Json, json};

pub use file::{GgufFile, TensorInfo, TensorOut, Value, write_gguf};
pub use quant::GgmlType;

use crate::error::{CoreError, Result};
use crate::load::models::{CausalLm, Family, ModelConfig};
use crate::load::tokenizer::ChatTokenizer;
use crate::load::weights::checkpoint_table;

/// f32 tensors by Hugging Face name: PyTorch shape and values.
pub type HfTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// True when `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// llama.cpp's architecture name of a family.
pub fn arch_of(family: Family) -> &'static str {
    match family {
        Family::Llama | Family::Mistral => "llama",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::Gemma2 => "gemma2",
        Family::Gemma3Text => "gemma3",
    }
}

/// Per-layer tensor names, GGUF -> Hugging Face; `sandwich` for Gemma's four norms.
fn layer_names(sandwich: bool) -> Vec<(&'static str, &'static str)> {
    let mut names = vec![
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
        ("attn_norm", "input_layernorm"),
    ];
    if sandwich {
        names.extend([
            ("post_attention_norm", "post_attention_layernorm"),
            ("ffn_norm", "pre_feedforward_layernorm"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
        ]);
    } else {
        names.push(("ffn_norm", "post_attention_layernorm"));
    }
    names
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str, sandwich: bool) -> Option<String> {
    let global = [
        ("model.embed_tokens.", "token_embd."),
        ("model.norm.", "output_norm."),
        ("lm_head.", "output."),
    ];
    for (from, to) in global {
        if let Some(rest) = hf.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let (g, _) = layer_names(sandwich)
        .into_iter()
        .find(|(_, h)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{param}"))
}

/// Reorders the rows of a q or k projection (`[heads * head_dim, cols]`, row-major) between
/// Hugging Face's layout and llama.cpp's: llama.cpp's row `(h, j, i)` is HF's `(h, i, j)` for
/// `i < 2`, `j < head_dim / 2`. `to_gguf` picks the direction.
fn permute_rows(data: &[f32], rows: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let cols = data.len() / rows;
    let half = rows / heads / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * 2 * half + i * half + j;
                let gg = h * 2 * half + j * 2 + i;
                let (from, to) = if to_gguf { (hf, gg) } else { (gg, hf) };
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// The heads whose rows a llama-architecture q/k tensor permutes, `None` for other tensors.
fn permuted_heads(hf: &str, config: &ModelConfig) -> Option<usize> {
    if arch_of(config.family) != "llama" {
        return None;
    }
    let d = &config.decoder;
    if hf.contains(".self_attn.q_proj.") {
        Some(d.num_heads)
    } else if hf.contains(".self_attn.k_proj.") {
        Some(d.num_kv_heads)
    } else {
        None
    }
}

fn meta_num(file: &GgufFile, key: &str) -> Option<f64> {
    file.get(key).and_then(Value::as_f64)
}

/// The model's config in config.json's form, from the `{arch}.*` metadata.
fn hf_config(file: &GgufFile) -> Result<Json> {
    let bad = |message: String| CoreError::Gguf {
        path: file.path.clone(),
        message,
    };
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no `general.architecture`".into()))?
        .to_owned();
    let model_type = match arch.as_str() {
        "llama" | "qwen2" | "qwen3" | "gemma2" => arch.clone(),
        "gemma3" => "gemma3_text".into(),
        other => {
            return Err(bad(format!(
                "`general.architecture` = {other:?}; clo reads \"llama\" (Llama, Mistral, SmolLM), \"qwen2\", \"qwen3\", \"gemma2\" and \"gemma3\""
            )));
        }
    };
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(bad(
            "the file scales RoPE by a `rope_freqs` tensor (Llama 3.1+ long context), which clo does not read from GGUF yet; use the Hugging Face directory".into(),
        ));
    }
    let key = |name: &str| meta_num(file, &format!("{arch}.{name}"));
    let int = |name: &str| file.get(&format!("{arch}.{name}")).and_then(Value::as_u64);
    let need = |name: &str| int(name).ok_or_else(|| bad(format!("no integer `{arch}.{name}`")));
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(<[Value]>::len);
    let embd = file.tensor("token_embd.weight");
    let vocab = int("vocab_size")
        .map(|v| v as usize)
        .or_else(|| embd.and_then(|t| t.dims.get(1)).map(|&d| d as usize))
        .or(tokens)
        .ok_or_else(|| bad("no vocabulary size (`{arch}.vocab_size`, token_embd.weight)".into()))?;
    // The sizes in their bounds, named by their GGUF keys, before any arithmetic uses them.
    let origin = file.path.display();
    let bounded = |name: &str, bound: &crate::limits::Bound| -> Result<u64> {
        bound.check_as(&format!("{arch}.{name}"), &origin, need(name)?)
    };
    use crate::limits::{HEADS, HIDDEN, LAYERS};
    let hidden = bounded("embedding_length", &HIDDEN)?;
    let heads = bounded("attention.head_count", &HEADS)?;
    let layers = bounded("block_count", &LAYERS)?;
    let mut c = json!({
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int("attention.head_count_kv").unwrap_or(heads),
        "max_position_embeddings": need("context_length")?,
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon")
            .ok_or_else(|| bad(format!("no `{arch}.attention.layer_norm_rms_epsilon`")))?,
        "tie_word_embeddings": file.tensor("output.weight").is_none(),
        "bos_token_id": file.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64),
        "eos_token_id": file.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64),
    });
    let head_dim = int("attention.key_length").unwrap_or(hidden / heads);
    c["head_dim"] = json!(head_dim);
    if let Some(theta) = key("rope.freq_base") {
        c["rope_theta"] = json!(theta);
    }
    match file
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(Value::as_str)
    {
        None | Some("none") => {}
        Some("linear") => {
            c["rope_scaling"] =
                json!({"rope_type": "linear", "factor": key("rope.scaling.factor").unwrap_or(1.0)})
        }
        Some(other) => {
            return Err(bad(format!(
                "`{arch}.rope.scaling.type` = {other:?}; clo reads none and linear"
            )));
        }
    }
    if arch.starts_with("gemma") {
        c["hidden_activation"] = json!("gelu_pytorch_tanh");
        c["sliding_window"] = json!(int("attention.sliding_window"));
        // llama.cpp scales scores by 1/sqrt(hidden / heads) for the 27B models (46 and 62
        // layers) and by 1/sqrt(head_dim) otherwise; the file does not state it.
        let big = (arch == "gemma2" && layers == 46) || (arch == "gemma3" && layers == 62);
        let derived = if big { hidden / heads } else { head_dim };
        // clo's own key, written by clo export for a model whose scalar differs.
        c["query_pre_attn_scalar"] =
            json!(key("attention.query_pre_attn_scalar").unwrap_or(derived as f64));
        if arch == "gemma2" {
            c["attn_logit_softcapping"] = json!(key("attn_logit_softcapping"));
            c["final_logit_softcapping"] = json!(key("final_logit_softcapping"));
        } else {
            c["sliding_window_pattern"] =
                json!(int("attention.sliding_window_pattern").unwrap_or(6));
            c["rope_local_base_freq"] = json!(key("rope.freq_base_swa").unwrap_or(10_000.0));
        }
    }
    Ok(c)
}

/// The model config of a GGUF file (its metadata only is read).
pub fn model_config(path: &Path) -> Result<ModelConfig> {
    let file = GgufFile::read_metadata(path)?;
    ModelConfig::from_value(path, hf_config(&file)?)
}

/// The config.json a Hugging Face directory of this GGUF model would hold.
pub fn config_json(path: &Path) -> Result<Json> {
    let mut config = hf_config(&GgufFile::read_metadata(path)?)?;
    config["torch_dtype"] = json!("float32");
    Ok(config)
}

/// Config and tokenizer from the metadata (tensor data is not read).
pub fn read_config_and_tokenizer(path: &Path) -> Result<(GgufFile, ModelConfig, ChatTokenizer)> {
    config_and_tokenizer_of(GgufFile::read_metadata(path)?)
}

fn config_and_tokenizer_of(file: GgufFile) -> Result<(GgufFile, ModelConfig, ChatTokenizer)> {
    let path = file.path.clone();
    let path = path.as_path();
    let config = ModelConfig::from_value(path, hf_config(&file)?)?;
    let tokenizer = vocab::tokenizer_from_gguf(&file)?;
    let token = |key: &str| {
        let id = file.get(key)?.as_u64()?;
        tokenizer.id_to_token(id as u32)
    };
    let template = file
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let tok = ChatTokenizer::from_parts(
        tokenizer.clone(),
        path,
        template,
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
        config.eos_token_ids.clone(),
    );
    if tok.vocab_size() > config.decoder.vocab_size {
        return Err(CoreError::VocabMismatch {
            path: path.to_path_buf(),
            tokenizer: tok.vocab_size(),
            model: config.decoder.vocab_size,
        });
    }
    Ok((file, config, tok))
}

/// Every tensor of the model, dequantized to f32 in Hugging Face's names and layouts
/// (q/k un-permuted); checked against the architecture first.
pub fn hf_tensors(file: &GgufFile, config: &ModelConfig) -> Result<HfTensors> {
    let sandwich = config.decoder.options.sandwich_norms;
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for spec in checkpoint_table(&config.decoder) {
        let name = gguf_name(&spec.name, sandwich).unwrap_or_default();
        match file.tensor(&name) {
            None => problems.push(format!(
                "tensor `{name}` ({}) is missing (expected shape {:?})",
                spec.name, spec.shape
            )),
            Some(t) if t.torch_shape() != spec.shape => problems.push(format!(
                "tensor `{name}`: expected shape {:?}, got {:?}",
                spec.shape,
                t.torch_shape()
            )),
            Some(t) => found.push((spec, t)),
        }
    }
    if !problems.is_empty() {
        return Err(CoreError::Weights {
            path: file.path.clone(),
            problems,
        });
    }
    let mut out = BTreeMap::new();
    for (spec, info) in found {
        let mut data = file.tensor_f32(info)?;
        if let Some(heads) = permuted_heads(&spec.name, config) {
            data = permute_rows(&data, spec.shape[0], heads, false);
        }
        out.insert(spec.name, (spec.shape, data));
    }
    Ok(out)
}

/// Fills `model` from f32 tensors in Hugging Face's names and layouts.
pub fn load_hf_tensors(model: &mut CausalLm, tensors: &HfTensors, source: &Path) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (shape, data))| {
            let bytes: &[u8] = bytemuck_f32(data);
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| CoreError::Gguf {
            path: source.to_path_buf(),
            message: format!("tensor layout: {e}"),
        })?;
    let bytes = safetensors::serialize(views, None).map_err(|e| CoreError::Gguf {
        path: source.to_path_buf(),
        message: format!("tensor layout: {e}"),
    })?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true)
        .validate(true);
    let result = model.load_from(&mut store).map_err(|e| CoreError::Gguf {
        path: source.to_path_buf(),
        message: e.to_string(),
    })?;
    if !result.errors.is_empty() {
        return Err(CoreError::Weights {
            path: source.to_path_buf(),
            problems: result.errors.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(())
}

/// The bytes of an f32 slice (little-endian targets only, as every target clo builds for).
fn bytemuck_f32(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; the slice covers the same memory.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// Loads a GGUF model onto `device` (weights dequantized to f32).
pub fn load(path: &Path, device: &Device) -> Result<(ModelConfig, CausalLm, ChatTokenizer)> {
    let size = std::fs::metadata(path)
        .map_err(|e| CoreError::io("stat", path, e))?
        .len();
    crate::limits::check_fits(
        &format!("reading {}", path.display()),
        size as f64,
        "use a smaller model file",
    )?;
    let (file, config, tokenizer) = config_and_tokenizer_of(GgufFile::read(path)?)?;
    // Before the tensors are dequantized to f32 (the large allocation).
    crate::limits::check_model_fits(&config.decoder, path.display())?;
    let tensors = hf_tensors(&file, &config)?;
    drop(file);
    let mut model = config.decoder.init(device);
    load_hf_tensors(&mut model, &tensors, path)?;
    tracing::info!(file = %path.display(), family = config.family.model_type(), "GGUF model loaded");
    Ok((config, model, tokenizer))
}

/// The storage types of a GGUF file's tensors, for `clo inspect`.
pub fn tensor_types(file: &GgufFile) -> Vec<String> {
    let mut types: Vec<String> = file.tensors.iter().map(|t| format!("{:?}", t.ty)).collect();
    types.sort();
    types.dedup();
    types
}

/// What `clo export --gguf` writes tensors as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    F16,
    Q8_0,
    Q4_0,
    F32,
}

impl ExportType {
    pub const NAMES: &'static str = "f16, q8_0, q4_0, f32";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "f32" => Self::F32,
            _ => return None,
        })
    }

    fn ggml(self) -> GgmlType {
        match self {
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::F32 => GgmlType::F32,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
        }
    }
}

/// Metadata describing the model (`general.*`, `{arch}.*`) and its tokenizer.
pub fn model_metadata(
    config: &ModelConfig,
    tokenizer: &ChatTokenizer,
    name: &str,
    file_type: Option<u32>,
    source: &Path,
) -> Result<Vec<(String, Value)>> {
    let d = &config.decoder;
    let arch = arch_of(config.family);
    let k = |s: &str| format!("{arch}.{s}");
    let u = |v: usize| Value::U32(v as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
    ];
    if let Some(ft) = file_type {
        m.push(("general.file_type".into(), Value::U32(ft)));
        m.push(("general.quantization_version".into(), Value::U32(2)));
    }
    m.extend([
        (k("vocab_size"), u(d.vocab_size)),
        (k("context_length"), u(d.max_position_embeddings)),
        (k("embedding_length"), u(d.hidden_size)),
        (k("block_count"), u(d.num_layers)),
        (k("feed_forward_length"), u(d.intermediate_size)),
        (k("attention.head_count"), u(d.num_heads)),
        (k("attention.head_count_kv"), u(d.num_kv_heads)),
        (k("attention.key_length"), u(d.head_dim)),
        (k("attention.value_length"), u(d.head_dim)),
        (k("rope.dimension_count"), u(d.head_dim)),
        (k("rope.freq_base"), Value::F32(d.rope.theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(d.rms_norm_eps as f32),
        ),
    ]);
    match d.rope.scaling {
        crate::load::models::RopeScaling::Default => {}
        crate::load::models::RopeScaling::Linear { factor } => {
            m.push((k("rope.scaling.type"), Value::String("linear".into())));
            m.push((k("rope.scaling.factor"), Value::F32(factor as f32)));
        }
        crate::load::models::RopeScaling::Llama3 { .. } => {
            return Err(CoreError::Gguf {
                path: source.to_path_buf(),
                message: "Llama 3.1 RoPE scaling is written by llama.cpp as a rope_freqs tensor, which clo does not write yet".into(),
            });
        }
    }
    let opts = &d.options;
    if let Some(w) = d.sliding_windows.iter().flatten().next() {
        m.push((k("attention.sliding_window"), u(*w)));
    }
    if let Some(cap) = opts.attn_logit_softcap {
        m.push((k("attn_logit_softcapping"), Value::F32(cap as f32)));
    }
    if let Some(cap) = opts.final_logit_softcap {
        m.push((k("final_logit_softcapping"), Value::F32(cap as f32)));
    }
    if let Some(scalar) = opts.query_pre_attn_scalar {
        m.push((
            k("attention.query_pre_attn_scalar"),
            Value::F32(scalar as f32),
        ));
    }
    if config.family == Family::Gemma3Text {
        // clo's own keys for what llama.cpp fixes in code (pattern 6, local base 10000).
        let period = d
            .sliding_windows
            .iter()
            .position(Option::is_none)
            .map_or(d.num_layers, |i| i + 1);
        m.push((k("attention.sliding_window_pattern"), u(period)));
        if let Some(theta) = opts.local_rope_theta {
            m.push((k("rope.freq_base_swa"), Value::F32(theta as f32)));
        }
    }
    m.extend(vocab::gguf_from_tokenizer(tokenizer.inner(), source)?);
    let id = |key: &str, token: Option<&str>| {
        token
            .and_then(|t| tokenizer.inner().token_to_id(t))
            .map(|id| (key.to_string(), Value::U32(id)))
    };
    let (bos, eos) = tokenizer.special_tokens();
    m.extend(id("tokenizer.ggml.bos_token_id", bos));
    match id("tokenizer.ggml.eos_token_id", eos) {
        Some(e) => m.push(e),
        None => m.extend(
            tokenizer
                .eos_ids()
                .first()
                .map(|&e| ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(e))),
        ),
    }
    if tokenizer.has_chat_template() {
        m.push((
            "tokenizer.chat_template".into(),
            Value::String(tokenizer.template_source().to_owned()),
        ));
    }
    Ok(m)
}

/// Encodes one Hugging Face tensor for GGUF: renamed, q/k permuted for `llama`, 1-D tensors
/// kept in f32 as llama.cpp keeps norms; rows that do not fill whole blocks fall back to f16.
pub fn encode_tensor(
    hf: &str,
    shape: &[usize],
    data: &[f32],
    config: &ModelConfig,
    ty: GgmlType,
) -> Option<TensorOut> {
    let name = gguf_name(hf, config.decoder.options.sandwich_norms)?;
    let permuted;
    let data = match permuted_heads(hf, config) {
        Some(heads) => {
            permuted = permute_rows(data, shape[0], heads, true);
            &permuted[..]
        }
        None => data,
    };
    let row = *shape.last().unwrap_or(&1);
    let ty = if shape.len() < 2 {
        GgmlType::F32
    } else if quant::can_quantize(ty, row) {
        ty
    } else {
        GgmlType::F16
    };
    Some(TensorOut {
        name,
        dims: shape.iter().rev().map(|&d| d as u64).collect(),
        ty,
        bytes: quant::quantize(ty, data),
    })
}

/// A model's tensors in Hugging Face's names and layouts, f32 (Gemma norms as stored in
/// safetensors, `w`, not `1 + w`).
pub fn model_tensors(model: &CausalLm, config: &ModelConfig) -> Result<HfTensors> {
    let bytes = crate::load::weights::safetensors_bytes(model, &config.decoder)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| CoreError::Safetensors {
        path: PathBuf::from("(in memory)"),
        message: e.to_string(),
    })?;
    let mut out = HfTensors::new();
    for (name, view) in st.tensors() {
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Writes `model` as a GGUF v3 file at `out` (atomically).
pub fn write_model(
    out: &Path,
    model: &CausalLm,
    config: &ModelConfig,
    tokenizer: &ChatTokenizer,
    ty: ExportType,
    name: &str,
    extra: Vec<(String, Value)>,
) -> Result<()> {
    let mut metadata = model_metadata(config, tokenizer, name, Some(ty.file_type()), out)?;
    metadata.extend(extra);
    let gemma = config.decoder.options.norm_weight_offset;
    let mut tensors = Vec::new();
    for (hf, (shape, mut data)) in model_tensors(model, config)? {
        if gemma && hf.ends_with("norm.weight") {
            data.iter_mut().for_each(|w| *w += 1.0);
        }
        tensors.extend(encode_tensor(&hf, &shape, &data, config, ty.ggml()));
    }
    // llama.cpp expects the global tensors first, then the blocks in order.
    tensors.sort_by_key(|t| tensor_order(&t.name));
    write_file(out, &metadata, &tensors)
}

/// Sort key: token_embd, then blocks by number, then output_norm and output.
fn tensor_order(name: &str) -> (usize, usize, String) {
    if name.starts_with("token_embd") {
        return (0, 0, name.into());
    }
    if let Some(rest) = name.strip_prefix("blk.")
        && let Some((n, tail)) = rest.split_once('.')
    {
        return (1, n.parse().unwrap_or(usize::MAX), tail.into());
    }
    (2, 0, name.into())
}

/// Writes LoRA factors (PEFT names and layouts, see [`crate::export::lora_tensors`]) as a
/// llama.cpp LoRA adapter: `general.type = "adapter"`, `adapter.type = "lora"`,
/// `adapter.lora.alpha`, tensors `blk.N.attn_q.weight.lora_a` / `.lora_b` in f32, B's rows
/// permuted as the base weight's are for the `llama` architecture.
pub fn write_lora(
    out: &Path,
    config: &ModelConfig,
    alpha: f64,
    tensors: &HfTensors,
    name: &str,
    extra: Vec<(String, Value)>,
) -> Result<()> {
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(arch_of(config.family).into()),
        ),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(name.into())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    metadata.extend(extra);
    let sandwich = config.decoder.options.sandwich_norms;
    let mut out_tensors = Vec::new();
    for (peft, (shape, data)) in tensors {
        let (module, factor) = peft.rsplit_once('.').unwrap_or((peft, ""));
        let hf = format!("{module}.weight");
        let base = gguf_name(&hf, sandwich).ok_or_else(|| CoreError::Gguf {
            path: out.to_path_buf(),
            message: format!("no GGUF name for the LoRA target `{module}`"),
        })?;
        let (suffix, data) = match factor {
            "lora_A" => ("lora_a", data.clone()),
            _ => (
                "lora_b",
                match permuted_heads(&hf, config) {
                    Some(heads) => permute_rows(data, shape[0], heads, true),
                    None => data.clone(),
                },
            ),
        };
        out_tensors.push(TensorOut {
            name: format!("{base}.{suffix}"),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ty: GgmlType::F32,
            bytes: quant::quantize(GgmlType::F32, &data),
        });
    }
    out_tensors.sort_by_key(|t| tensor_order(&t.name));
    write_file(out, &metadata, &out_tensors)
}

/// Writes a GGUF file atomically (temporary file, then rename).
pub fn write_file(out: &Path, metadata: &[(String, Value)], tensors: &[TensorOut]) -> Result<()> {
    crate::fsutil::write_atomically_with(out, |w| write_gguf(w, metadata, tensors))
}
