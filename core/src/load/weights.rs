//! Loading Hugging Face safetensors checkpoints (single file or sharded) into [`CausalLm`].
//!
//! The module tree of [`CausalLm`] mirrors HF's tensor names, so the mapping table
//! ([`checkpoint_table`]) lists each HF name with its shape and nothing needs renaming. Two
//! transforms happen on the way in, both done by `burn-store` adapters:
//! - Linear weights are transposed: PyTorch stores `[out, in]`, `burn::nn::Linear` `[in, out]`
//!   (`PyTorchToBurnAdapter`), and RMSNorm's `weight` fills Burn's `gamma`;
//! - f16/bf16 tensors are cast to f32 (`FloatCastAdapter`), since training keeps f32 weights.
//!
//! Before anything is loaded, each file's header is read and checked against the table, so a
//! truncated file or a wrong shape is reported by file and tensor name.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::DType;
use serde::Deserialize;

use crate::error::{CoreError, Result};
use crate::load::files::ModelFiles;
use crate::load::models::{CausalLm, DecoderConfig};

/// One tensor of a checkpoint, in HF's naming and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// PyTorch layout (`[out, in]` for linear weights).
    pub shape: Vec<usize>,
}

/// The mapping table: every tensor a checkpoint of this architecture holds.
pub fn checkpoint_table(c: &DecoderConfig) -> Vec<TensorSpec> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let spec = |name: String, shape: &[usize]| TensorSpec {
        name,
        shape: shape.to_vec(),
    };
    let mut table = vec![spec("model.embed_tokens.weight".into(), &[v, h])];
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let linears: [(&str, usize, usize, bool); 7] = [
            ("self_attn.q_proj", q, h, c.qkv_bias),
            ("self_attn.k_proj", kv, h, c.qkv_bias),
            ("self_attn.v_proj", kv, h, c.qkv_bias),
            ("self_attn.o_proj", h, q, c.o_bias),
            ("mlp.gate_proj", i, h, c.mlp_bias),
            ("mlp.up_proj", i, h, c.mlp_bias),
            ("mlp.down_proj", h, i, c.mlp_bias),
        ];
        for (name, out, inp, bias) in linears {
            table.push(spec(format!("{p}.{name}.weight"), &[out, inp]));
            if bias {
                table.push(spec(format!("{p}.{name}.bias"), &[out]));
            }
        }
        if c.options.qk_norm {
            table.push(spec(format!("{p}.self_attn.q_norm.weight"), &[c.head_dim]));
            table.push(spec(format!("{p}.self_attn.k_norm.weight"), &[c.head_dim]));
        }
        table.push(spec(format!("{p}.input_layernorm.weight"), &[h]));
        table.push(spec(format!("{p}.post_attention_layernorm.weight"), &[h]));
        if c.options.sandwich_norms {
            table.push(spec(format!("{p}.pre_feedforward_layernorm.weight"), &[h]));
            table.push(spec(format!("{p}.post_feedforward_layernorm.weight"), &[h]));
        }
    }
    table.push(spec("model.norm.weight".into(), &[h]));
    if !c.tie_word_embeddings {
        table.push(spec("lm_head.weight".into(), &[v, h]));
    }
    table
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(checkpoint_names(&ModelFiles::Dir(dir))?
        .into_iter()
        .map(|name| dir.join(name))
        .collect())
}

/// The shard names of `model.safetensors.index.json` (text read from `index`), sorted and
/// deduplicated, each checked to be a plain file name before anything opens it.
fn shard_names(index: &Path, text: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let parsed: Index = serde_json::from_str(text).map_err(|e| {
        CoreError::json(
            index,
            &e,
            "the index needs a `weight_map` of tensor name -> shard file",
        )
    })?;
    let mut names: Vec<String> = parsed.weight_map.into_values().collect();
    names.sort();
    names.dedup();
    for name in &names {
        crate::load::files::check_shard_name(index, name)?;
    }
    Ok(names)
}

/// Name, dtype and shape of every tensor in a safetensors file, read from its header alone.
/// Fails if the header is malformed or the file is shorter than the header says.
pub fn read_header(path: &Path) -> Result<BTreeMap<String, (String, Vec<usize>)>> {
    let bad = |message: String| CoreError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| CoreError::io("open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| CoreError::io("stat", path, e))?
        .len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad(format!("only {size} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > size.saturating_sub(8) || header_len > 100_000_000 {
        return Err(bad(format!(
            "header length {header_len} does not fit in a file of {size} bytes"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read header: {e}")))?;
    header_entries(path, &header, size - 8 - header_len)
}

/// Name, dtype and shape of every tensor of a whole safetensors file in memory (`path` names it
/// in errors).
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, (String, Vec<usize>)>> {
    let bad = |message: String| CoreError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let size = bytes.len() as u64;
    if size < 8 {
        return Err(bad(format!("only {size} bytes, too short for a header")));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > size - 8 || header_len > 100_000_000 {
        return Err(bad(format!(
            "header length {header_len} does not fit in a file of {size} bytes"
        )));
    }
    header_entries(
        path,
        &bytes[8..8 + header_len as usize],
        size - 8 - header_len,
    )
}

/// The entries of a safetensors JSON header whose data section holds `data_len` bytes.
fn header_entries(
    path: &Path,
    header: &[u8],
    data_len: u64,
) -> Result<BTreeMap<String, (String, Vec<usize>)>> {
    let bad = |message: String| CoreError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    #[derive(Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: [u64; 2],
    }
    let mut entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    entries.remove("__metadata__");
    let mut out = BTreeMap::new();
    for (name, value) in entries {
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| bad(format!("header entry `{name}`: {e}")))?;
        if entry.data_offsets[1] > data_len || entry.data_offsets[0] > entry.data_offsets[1] {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {} of the data but the file holds {data_len} (truncated?)",
                entry.data_offsets[1]
            )));
        }
        // The shape's bytes must be exactly the range the offsets give, computed without
        // overflow (a hostile header's dims may multiply past u64).
        let span = entry.data_offsets[1] - entry.data_offsets[0];
        let fills = match dtype_bytes(&entry.dtype) {
            Some(size) => {
                entry
                    .shape
                    .iter()
                    .try_fold(size, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
                    == Some(span)
            }
            None => true,
        };
        if entry.shape.len() > 8 || !fills {
            return Err(bad(format!(
                "tensor `{name}`: shape {:?} of {} does not fill its {span} bytes",
                entry.shape, entry.dtype
            )));
        }
        out.insert(name, (entry.dtype, entry.shape));
    }
    Ok(out)
}

/// Bytes per element of a safetensors dtype (`None`: a dtype clo does not know, checked later).
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// The safetensors files of a model directory (on disk or in memory): `model.safetensors`, or
/// the shards that `model.safetensors.index.json` names, by name. Every shard must be there.
pub fn checkpoint_names(files: &ModelFiles<'_>) -> Result<Vec<String>> {
    if files.exists("model.safetensors") {
        return Ok(vec!["model.safetensors".into()]);
    }
    const INDEX: &str = "model.safetensors.index.json";
    if !files.exists(INDEX) {
        return Err(CoreError::MissingFile {
            path: files.path("model.safetensors"),
            what: "weights (model.safetensors or model.safetensors.index.json)",
        });
    }
    let names = shard_names(
        &files.path(INDEX),
        &files.read_string(INDEX, "shard index")?,
    )?;
    for name in &names {
        if !files.exists(name) {
            return Err(CoreError::MissingFile {
                path: files.path(name),
                what: "shard named by model.safetensors.index.json",
            });
        }
    }
    Ok(names)
}

/// [`load_weights`] from files in memory (the browser's download of a model directory).
pub fn load_weights_from_memory(
    model: &mut CausalLm,
    root: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    config: &DecoderConfig,
) -> Result<()> {
    let source = ModelFiles::Memory { root, files };
    let names = checkpoint_names(&source)?;
    let mut found: HashMap<String, (PathBuf, String, Vec<usize>)> = HashMap::new();
    for name in &names {
        let bytes = files.get(name).ok_or_else(|| CoreError::MissingFile {
            path: source.path(name),
            what: "shard named by model.safetensors.index.json",
        })?;
        for (tensor, (dtype, shape)) in parse_header(&source.path(name), bytes)? {
            found.insert(tensor, (source.path(name), dtype, shape));
        }
    }
    check_tensors(&found, config, root)?;
    for name in &names {
        let path = source.path(name);
        let adapter = PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32));
        let mut store = SafetensorsStore::from_bytes(Some(files[name].clone()))
            .with_from_adapter(adapter)
            .allow_partial(true)
            .validate(true);
        apply_store(model, &mut store, &path)?;
    }
    if config.options.norm_weight_offset {
        *model = model.clone().shift_norm_weights(1.0);
    }
    Ok(())
}

/// Loads what `store` holds into `model` (tensors it lacks stay as they are).
fn apply_store(model: &mut CausalLm, store: &mut SafetensorsStore, path: &Path) -> Result<()> {
    let result = model.load_from(store).map_err(|e| CoreError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if !result.errors.is_empty() {
        return Err(CoreError::Weights {
            path: path.to_path_buf(),
            problems: result.errors.iter().map(ToString::to_string).collect(),
        });
    }
    if !result.unused.is_empty() {
        tracing::debug!(file = %path.display(), unused = ?result.unused, "tensors not used by the model");
    }
    tracing::debug!(file = %path.display(), applied = result.applied.len(), "loaded shard");
    Ok(())
}

/// Checks the tensors of a checkpoint (name -> file, dtype, shape) against the config.
fn check_tensors(
    found: &HashMap<String, (PathBuf, String, Vec<usize>)>,
    config: &DecoderConfig,
    dir: &Path,
) -> Result<()> {
    let mut problems = Vec::new();
    for spec in checkpoint_table(config) {
        match found.get(&spec.name) {
            None => problems.push(format!(
                "tensor `{}` is missing (expected shape {:?})",
                spec.name, spec.shape
            )),
            Some((file, dtype, shape)) => {
                if *shape != spec.shape {
                    problems.push(format!(
                        "tensor `{}` in {}: expected shape {:?}, got {:?}",
                        spec.name,
                        file.display(),
                        spec.shape,
                        shape
                    ));
                }
                if !matches!(dtype.as_str(), "F32" | "F16" | "BF16") {
                    problems.push(format!(
                        "tensor `{}` in {}: dtype {dtype} (clo loads F32, F16 and BF16; quantized checkpoints are not supported)",
                        spec.name,
                        file.display()
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(CoreError::Weights {
            path: dir.to_path_buf(),
            problems,
        });
    }
    Ok(())
}

/// Fills `model` with the checkpoint in `dir`, checking it against the config first.
pub fn load_weights(model: &mut CausalLm, dir: &Path, config: &DecoderConfig) -> Result<()> {
    let files = checkpoint_files(dir)?;
    let mut found: HashMap<String, (PathBuf, String, Vec<usize>)> = HashMap::new();
    for file in &files {
        for (name, (dtype, shape)) in read_header(file)? {
            found.insert(name, (file.clone(), dtype, shape));
        }
    }
    check_tensors(&found, config, dir)?;

    for file in &files {
        let adapter = PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32));
        let mut store = SafetensorsStore::from_file(file)
            .with_from_adapter(adapter)
            .allow_partial(true)
            .validate(true);
        apply_store(model, &mut store, file)?;
    }
    if config.options.norm_weight_offset {
        *model = model.clone().shift_norm_weights(1.0);
    }
    Ok(())
}

/// Gemma's norm weights back to the `w - 1` its checkpoints store (`None`: nothing to change).
pub(crate) fn shift_for_saving(
    model: &crate::load::models::CausalLm,
    config: &crate::load::models::DecoderConfig,
) -> Option<crate::load::models::CausalLm> {
    config
        .options
        .norm_weight_offset
        .then(|| model.clone().shift_norm_weights(-1.0))
}

/// A model's weights as a safetensors file in memory, in Hugging Face's names and layouts
/// (f32 tensors): what `clo export` writes as `model.safetensors`.
pub fn safetensors_bytes(
    model: &crate::load::models::CausalLm,
    config: &crate::load::models::DecoderConfig,
) -> Result<Vec<u8>> {
    let shifted = shift_for_saving(model, config);
    let model = shifted.as_ref().unwrap_or(model);
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter);
    let fail = |e: &dyn std::fmt::Display| CoreError::Safetensors {
        path: PathBuf::from("(in memory)"),
        message: e.to_string(),
    };
    model.save_into(&mut store).map_err(|e| fail(&e))?;
    store.get_bytes().map_err(|e| fail(&e))
}

/// Writes a model's weights as `model.safetensors` with Hugging Face tensor names and layouts
/// (Gemma's norm weights back to `w - 1` when `config` says so).
pub fn save_safetensors(
    model: &crate::load::models::CausalLm,
    config: &crate::load::models::DecoderConfig,
    path: &Path,
) -> Result<()> {
    let shifted = shift_for_saving(model, config);
    let model = shifted.as_ref().unwrap_or(model);
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .metadata("format", "pt")
        .overwrite(true);
    model.save_into(&mut store).map_err(|e| {
        CoreError::Invalid(format!(
            "{}: {e}\nHINT: check free disk space",
            path.display()
        ))
    })?;
    // safetensors writes through a temporary file, created 0600: the model file gets the mode
    // of the files beside it (config.json, the tokenizer), readable by the group and others.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| CoreError::io("set the mode of", path, e))?;
    }
    Ok(())
}

/// f32 values of a safetensors tensor (f32, f16 or bf16 on disk); `None` for another type.
pub fn f32_values(view: &safetensors::tensor::TensorView<'_>) -> Option<Vec<f32>> {
    use burn::tensor::{bf16, f16};
    let data = view.data();
    match view.dtype() {
        safetensors::Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        safetensors::Dtype::F16 => Some(
            data.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        safetensors::Dtype::BF16 => Some(
            data.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// The bytes of a safetensors file of f32 tensors (`(name, shape, values)`), with `metadata`
/// (`format: pt` for files transformers and peft read). The error is safetensors' own; the
/// caller names the file.
pub fn f32_safetensors<'a>(
    tensors: impl IntoIterator<Item = (String, &'a [usize], &'a [f32])>,
    metadata: Option<HashMap<String, String>>,
) -> std::result::Result<Vec<u8>, String> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            (
                name,
                shape.to_vec(),
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    safetensors::serialize(views, metadata).map_err(|e| e.to_string())
}

/// The metadata transformers and peft expect of a PyTorch-layout safetensors file.
pub fn pt_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}
