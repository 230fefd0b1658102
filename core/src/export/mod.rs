//! Exports a trained run for the Hugging Face ecosystem:
//! - merged: a model directory transformers loads (LoRA folded into the weights, f32);
//! - PEFT: `adapter_config.json` + `adapter_model.safetensors` for peft (LoRA runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::TensorData;
use serde_json::{Value, json};

use crate::error::{CoreError, Result};

pub mod merge;
use crate::fsutil::{
    Claim, claim_output, refuse_run_dir_output, remove_stale_temps_beside, replace_dir_atomically,
    write_atomically, write_json_atomically,
};
// Safetensors writing lives with the weight mapping; `export::safetensors_bytes` stays a path.
pub use crate::load::weights::{safetensors_bytes, save_safetensors};
use crate::train::checkpoint::{RunDir, load_trained};
use crate::train::{RunConfig, TrainableKind};

/// Files of a model directory that describe the tokenizer and generation, copied as they are.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Which weights of a run to export: `best` (lowest validation loss, else the last checkpoint),
/// `last`, or a checkpoint directory.
pub fn resolve_weights(run: &Path, which: &str) -> Result<PathBuf> {
    let dir = RunDir::new(run);
    let last = || {
        dir.latest_checkpoint().ok_or_else(|| {
            CoreError::Invalid(format!(
                "{} holds no checkpoint\nHINT: train a run there first (the `out` setting of training), or check the path",
                run.display()
            ))
        })
    };
    match which {
        "best" if dir.best().join("trainable.bpk").exists() => Ok(dir.best()),
        "best" | "last" => last(),
        other => {
            let path = PathBuf::from(other);
            let path = if path.is_absolute() {
                path
            } else {
                run.join(path)
            };
            if path.join("trainable.bpk").exists() {
                Ok(path)
            } else {
                Err(CoreError::MissingFile {
                    path: path.join("trainable.bpk"),
                    what: "checkpoint weights",
                })
            }
        }
    }
}

/// The file that marks a directory as written by `clo export` (what was exported from where), so
/// that a later export may replace it and nothing else.
pub const EXPORT_MARKER: &str = ".clo-export.json";

/// Checks that `out` may take an export of `run`: not the run itself, not inside a run, not a
/// file or a directory of other files (unless `force`, which moves it aside), and removes what
/// an export killed mid-write left beside it.
fn claim_export_out(run: &Path, out: &Path, force: bool) -> Result<Claim> {
    check_export_paths(run, out)?;
    claim_output(out, "clo export", force, |dir| {
        dir.join(EXPORT_MARKER).is_file()
    })
}

fn check_export_paths(run: &Path, out: &Path) -> Result<()> {
    refuse_run_dir_output(out, None)?;
    if !RunDir::new(run).config().is_file() {
        return Err(CoreError::MissingFile {
            path: RunDir::new(run).config(),
            what: "run config of the run to export",
        });
    }
    remove_stale_temps_beside(out);
    Ok(())
}

/// Metadata key naming the run a GGUF export came from (its marker, as `.clo-export.json` is
/// for directories).
pub const GGUF_EXPORT_KEY: &str = "clo.export.run";

/// A GGUF output file may be replaced only when an earlier `clo export` wrote it.
fn claim_gguf_out(run: &Path, out: &Path, force: bool) -> Result<Claim> {
    check_export_paths(run, out)?;
    claim_output(out, "clo export", force, |file| {
        file.is_file()
            && crate::load::gguf::GgufFile::read_metadata(file)
                .is_ok_and(|f| f.get(GGUF_EXPORT_KEY).is_some())
    })
}

fn gguf_marker(run: &Path, weights: &Path) -> Vec<(String, crate::load::gguf::Value)> {
    use crate::load::gguf::Value::String as S;
    vec![
        (GGUF_EXPORT_KEY.into(), S(run.display().to_string())),
        (
            "clo.export.weights".into(),
            S(weights.display().to_string()),
        ),
    ]
}

fn run_name(run: &Path) -> String {
    std::path::absolute(run)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "clo".into())
}

/// Writes the run's model (LoRA merged) as one GGUF v3 file for llama.cpp, Ollama and
/// LM Studio, its 2-D tensors in `ty`, with the tokenizer, chat template and EOS.
pub fn export_gguf(
    run: &Path,
    which: &str,
    out: &Path,
    ty: crate::load::gguf::ExportType,
    device: &Device,
    force: bool,
) -> Result<PathBuf> {
    claim_gguf_out(run, out, force)?;
    let (_, weights, lm, model) = load_merged(run, which, device)?;
    crate::load::gguf::write_model(
        out,
        &model,
        &lm.config,
        &lm.tokenizer,
        ty,
        &run_name(run),
        gguf_marker(run, &weights),
    )?;
    tracing::info!(out = %out.display(), from = %weights.display(), "GGUF exported");
    Ok(weights)
}

/// Writes a LoRA run's adapter as a llama.cpp LoRA GGUF (`llama-cli -m BASE.gguf --lora OUT`).
pub fn export_gguf_lora(
    run: &Path,
    which: &str,
    out: &Path,
    device: &Device,
    force: bool,
) -> Result<PathBuf> {
    claim_gguf_out(run, out, force)?;
    let (config, weights, lm) = load_lora_run(run, which, device, "a GGUF LoRA adapter", "gguf")?;
    let tensors = lora_tensors(&lm.model, &weights)?;
    crate::load::gguf::write_lora(
        out,
        &lm.config,
        config.lora_alpha,
        &tensors,
        &run_name(run),
        gguf_marker(run, &weights),
    )?;
    tracing::info!(out = %out.display(), from = %weights.display(), "GGUF LoRA adapter exported");
    Ok(weights)
}

fn write_marker(dir: &Path, run: &Path, weights: &Path, kind: &str) -> Result<()> {
    write_json_atomically(
        &dir.join(EXPORT_MARKER),
        &json!({"kind": kind, "run": run, "weights": weights}),
    )
}

fn run_config(run: &Path) -> Result<RunConfig> {
    RunConfig::from_file(&RunDir::new(run).config())
}

/// Writes a Hugging Face model directory with the run's weights (LoRA merged), in f32.
///
/// An existing `out` is replaced only when an earlier export wrote it; anything else there is
/// refused, or with `force` moved aside. A run directory is never an output.
pub fn export_merged(
    run: &Path,
    which: &str,
    out: &Path,
    device: &Device,
    force: bool,
) -> Result<PathBuf> {
    claim_export_out(run, out, force)?;
    let (config, weights, lm, model) = load_merged(run, which, device)?;
    write_merged(out, &config.model, &lm, &model, |tmp| {
        write_marker(tmp, run, &weights, "merged")
    })?;
    tracing::info!(out = %out.display(), from = %weights.display(), "merged model exported");
    Ok(weights)
}

/// A Hugging Face directory at `out` (replaced atomically): `model` in f32, the config of the
/// model directory or GGUF file `source`, its tokenizer files, and what `marker` writes.
fn write_merged(
    out: &Path,
    source: &Path,
    lm: &crate::Pretrained,
    model: &crate::load::models::CausalLm,
    marker: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let mut hf_config = hf_config_of(source)?;
    as_f32_config(&mut hf_config);
    replace_dir_atomically(out, |tmp| {
        save_safetensors(model, &lm.config.decoder, &tmp.join("model.safetensors"))?;
        write_json_atomically(&tmp.join("config.json"), &hf_config)?;
        marker(tmp)?;
        tokenizer_files(source, &lm.tokenizer, tmp)
    })
}

/// The Hugging Face `config.json` of the model directory or GGUF file `source`.
fn hf_config_of(source: &Path) -> Result<Value> {
    if crate::load::gguf::is_gguf(source) {
        crate::load::gguf::config_json(source)
    } else {
        let path = source.join("config.json");
        serde_json::from_str(&crate::error::read_to_string(&path, "model config")?)
            .map_err(|e| CoreError::json(&path, &e, "config.json must be JSON"))
    }
}

/// A model directory (or GGUF file) with the PEFT adapter `adapter` on it, as the model to
/// export (LoRA merged), and the marker of such an export.
fn load_model_dir(
    model: &Path,
    adapter: Option<&Path>,
    device: &Device,
) -> Result<(crate::Pretrained, crate::load::models::CausalLm)> {
    let lm = crate::Pretrained::load(model, device)?;
    let lm = match adapter {
        Some(a) => lm.with_adapter(a)?,
        None => lm,
    };
    let merged = lm.model.valid().materialize();
    Ok((lm, merged))
}

/// Checks that `out` may take an export that is not of a run: not inside a run, and an existing
/// `out` only when `clo export` wrote it (or with `force`, moved aside).
fn claim_model_out(out: &Path, force: bool, gguf: bool) -> Result<Claim> {
    refuse_run_dir_output(out, None)?;
    remove_stale_temps_beside(out);
    claim_output(out, "clo export", force, |p| {
        if gguf {
            p.is_file()
                && crate::load::gguf::GgufFile::read_metadata(p)
                    .is_ok_and(|f| f.get(GGUF_EXPORT_KEY).is_some())
        } else {
            p.join(EXPORT_MARKER).is_file()
        }
    })
}

/// `clo export --model DIR [--adapter ADAPTER] --out OUT`: a model directory (or a PEFT adapter
/// directory, or a model with `adapter` on it, as the browser downloads them) written as a
/// Hugging Face directory with the adapter merged, in f32.
pub fn export_model_merged(
    model: &Path,
    adapter: Option<&Path>,
    out: &Path,
    device: &Device,
    force: bool,
) -> Result<()> {
    claim_model_out(out, force, false)?;
    let (lm, merged) = load_model_dir(model, adapter, device)?;
    write_merged(out, &lm.dir, &lm, &merged, |tmp| {
        write_json_atomically(
            &tmp.join(EXPORT_MARKER),
            &json!({"kind": "merged", "model": model, "adapter": adapter}),
        )
    })?;
    tracing::info!(out = %out.display(), model = %model.display(), "merged model exported");
    Ok(())
}

/// `clo export --model DIR [--adapter ADAPTER] --gguf OUT.gguf`: as [`export_model_merged`], as
/// one GGUF file for llama.cpp, Ollama and LM Studio.
pub fn export_model_gguf(
    model: &Path,
    adapter: Option<&Path>,
    out: &Path,
    ty: crate::load::gguf::ExportType,
    device: &Device,
    force: bool,
) -> Result<()> {
    claim_model_out(out, force, true)?;
    let (lm, merged) = load_model_dir(model, adapter, device)?;
    use crate::load::gguf::Value::String as S;
    let marker = vec![
        (GGUF_EXPORT_KEY.into(), S(model.display().to_string())),
        (
            "clo.export.adapter".into(),
            S(adapter.map(|a| a.display().to_string()).unwrap_or_default()),
        ),
    ];
    let name = std::path::absolute(adapter.unwrap_or(model))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "clo".into());
    crate::load::gguf::write_model(out, &merged, &lm.config, &lm.tokenizer, ty, &name, marker)?;
    tracing::info!(out = %out.display(), model = %model.display(), "GGUF exported");
    Ok(())
}

/// Marks an HF `config.json` as f32 (what the merged export's weights are), under the keys the
/// base used: `dtype` (transformers 5), `torch_dtype` (transformers 4, and the default), or
/// both. Adding the other key made configs no reader of transformers 5 accepts.
pub fn as_f32_config(hf_config: &mut Value) {
    let has = |k: &str| hf_config.get(k).is_some();
    let keys: &[&str] = match (has("dtype"), has("torch_dtype")) {
        (true, true) => &["dtype", "torch_dtype"],
        (true, false) => &["dtype"],
        (false, _) => &["torch_dtype"],
    };
    for key in keys {
        hf_config[*key] = json!("float32");
    }
}

/// tokenizer.json, tokenizer_config.json (special tokens, template) and chat_template.jinja of
/// a tokenizer built from a GGUF file, as transformers 5 writes them.
fn write_tokenizer_files(tok: &crate::load::tokenizer::ChatTokenizer, to: &Path) -> Result<()> {
    let text = tok
        .inner()
        .to_string(true)
        .map_err(|e| CoreError::Tokenizer {
            path: to.join("tokenizer.json"),
            message: e.to_string(),
        })?;
    write_atomically(&to.join("tokenizer.json"), text.as_bytes())?;
    let (bos, eos) = tok.special_tokens();
    write_json_atomically(
        &to.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos}),
    )?;
    if tok.has_chat_template() {
        write_atomically(
            &to.join("chat_template.jinja"),
            tok.template_source().as_bytes(),
        )?;
    }
    Ok(())
}

/// The tokenizer files of the run's model: copied from its directory, or written from the
/// tokenizer built from its GGUF file.
fn tokenizer_files(
    model: &Path,
    tok: &crate::load::tokenizer::ChatTokenizer,
    to: &Path,
) -> Result<()> {
    if crate::load::gguf::is_gguf(model) {
        write_tokenizer_files(tok, to)
    } else {
        copy_tokenizer_files(model, to)
    }
}

fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name)).map_err(|e| CoreError::io("copy", &src, e))?;
        }
    }
    Ok(())
}

/// A run's config, the weights `which` names, the loaded model and its inference copy with
/// LoRA folded in.
fn load_merged(
    run: &Path,
    which: &str,
    device: &Device,
) -> Result<(
    RunConfig,
    PathBuf,
    crate::Pretrained,
    crate::load::models::CausalLm,
)> {
    let config = run_config(run)?;
    let weights = resolve_weights(run, which)?;
    let lm = load_trained(&config, &weights, device)?;
    let model = lm.model.valid().materialize();
    Ok((config, weights, lm, model))
}

/// A LoRA run's config, the weights `which` names, and the model with its adapters; any other
/// run is refused, naming `what` was asked and the export setting to use instead.
fn load_lora_run(
    run: &Path,
    which: &str,
    device: &Device,
    what: &str,
    instead: &str,
) -> Result<(RunConfig, PathBuf, crate::Pretrained)> {
    let config = run_config(run)?;
    if config.trainable != TrainableKind::Lora {
        return Err(CoreError::Invalid(format!(
            "{}: {what} needs a LoRA run, this one trained `{:?}`\nHINT: export the whole model instead (the `{instead}` setting)",
            run.display(),
            config.trainable
        )));
    }
    let weights = resolve_weights(run, which)?;
    let lm = load_trained(&config, &weights, device)?;
    Ok((config, weights, lm))
}

/// The LoRA factors of a model in PEFT's names (`model.layers.0.self_attn.q_proj.lora_A`,
/// without `.weight`) and layouts (`lora_A: [r, in]`, `lora_B: [out, r]`), f32.
pub fn lora_tensors(
    model: &crate::load::models::CausalLm,
    weights: &Path,
) -> Result<crate::load::gguf::HfTensors> {
    let mut tensors = BTreeMap::new();
    for t in model.valid().collect(None, None, false) {
        let Some((base, factor)) = t
            .name
            .strip_suffix(".lora.a")
            .map(|b| (b, "lora_A"))
            .or_else(|| t.name.strip_suffix(".lora.b").map(|b| (b, "lora_B")))
        else {
            continue;
        };
        let module = base.strip_suffix(".weight").unwrap_or(base);
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let bytes = t
            .to_bytes()
            .map_err(|e| CoreError::Invalid(format!("{}: {e}", t.name)))?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(
            format!("{module}.{factor}"),
            (
                vec![cols, rows],
                crate::load::peft::transpose(&values, rows, cols),
            ),
        );
    }
    if tensors.is_empty() {
        return Err(CoreError::Invalid(format!(
            "{}: no LoRA adapter tensors found",
            weights.display()
        )));
    }
    Ok(tensors)
}

/// Writes a PEFT LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`) of a LoRA run
/// (layouts in [`crate::load::peft`]).
///
/// `out` is claimed as by [`export_merged`].
pub fn export_peft(
    run: &Path,
    which: &str,
    out: &Path,
    device: &Device,
    force: bool,
) -> Result<PathBuf> {
    use crate::load::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterConfig, adapter_safetensors};
    claim_export_out(run, out, force)?;
    let (config, weights, lm) = load_lora_run(run, which, device, "a PEFT adapter", "merged")?;
    let bytes = adapter_safetensors(&lora_tensors(&lm.model, &weights)?)?;
    let adapter_config = AdapterConfig {
        base: config.model.display().to_string(),
        rank: config.lora_rank,
        alpha: config.lora_alpha,
        rslora: false,
        targets: config.lora_targets.clone(),
    }
    .to_json();
    replace_dir_atomically(out, |tmp| {
        write_atomically(&tmp.join(ADAPTER_WEIGHTS), &bytes)?;
        write_json_atomically(&tmp.join(ADAPTER_CONFIG), &adapter_config)?;
        write_marker(tmp, run, &weights, "peft")?;
        tokenizer_files(&config.model, &lm.tokenizer, tmp)
    })?;
    tracing::info!(out = %out.display(), from = %weights.display(), "PEFT adapter exported");
    Ok(weights)
}

/// A copy of `model` on device `to`, every parameter read with an awaited read (a blocking read
/// panics in a browser): the browser copies a WebGPU model to the CPU backend this way, where
/// [`lora_tensors`] and [`safetensors_bytes`] then read it.
pub async fn copy_to_device(
    model: &crate::load::models::CausalLm,
    to: &Device,
) -> Result<crate::load::models::CausalLm> {
    struct Collect(Vec<(ParamId, Vec<usize>, Tensor<1>)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let dims = t.dims().to_vec();
            let n: usize = dims.iter().product();
            self.0.push((param.id, dims, t.reshape([n])));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    let mut read: std::collections::HashMap<ParamId, (Vec<usize>, TensorData)> =
        std::collections::HashMap::new();
    for (id, dims, t) in collect.0 {
        let data = t
            .into_data_async()
            .await
            .map_err(|e| CoreError::Internal(format!("reading a weight from the device: {e:?}")))?;
        read.insert(id, (dims, data));
    }
    struct Put<'a> {
        read: std::collections::HashMap<ParamId, (Vec<usize>, TensorData)>,
        to: &'a Device,
    }
    impl ModuleMapper for Put<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some((dims, data)) = self.read.remove(&param.id) else {
                return param;
            };
            let to = self.to.clone();
            param.map(move |_| {
                let mut shape = [0usize; D];
                shape.copy_from_slice(&dims);
                Tensor::<1>::from_data(data, &to).reshape(shape)
            })
        }
    }
    Ok(model.clone().map(&mut Put { read, to }))
}
