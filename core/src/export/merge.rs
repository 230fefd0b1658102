//! `clo merge`: one model from a base and two experts fine-tuned from it, a task expert (trained
//! in English) and a language expert (trained on target-language text), as the surveys in
//! `../shared/seeds/cross-lingual-*.txt` describe:
//! - **reverting weak updates** (`revert_below = Q`, first, to each expert and each tensor on its
//!   own): elements whose `|expert - base|` is below that tensor's Q-quantile of
//!   `|expert - base|` take the base's value (Q = 1 reverts every element);
//! - **layer swapping** (`swap_layers`): every tensor of decoder layer `i` in the ranges comes
//!   from the language expert, every other tensor from the task expert;
//! - otherwise **task arithmetic** (`weights = [a, b]`): `base + a (task - base) + b (language
//!   - base)`; `[0.5, 0.5]` is the linear average of the two.
//!
//! Experts are run directories (their best weights, LoRA folded in) or model directories of the
//! base's architecture. The output is a normal Hugging Face model directory in f32 (`clo export
//! --model DIR --gguf` turns it into GGUF), with the recipe in its `config.json` (`clo_merge`).

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::SafeTensors;
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    EXPORT_MARKER, as_f32_config, claim_model_out, hf_config_of, load_merged, tokenizer_files,
};
use crate::error::{CoreError, Result};
use crate::fsutil::{replace_dir_atomically, write_atomically, write_json_atomically};
use crate::load::gguf::HfTensors;
use crate::load::weights::{f32_safetensors, f32_values, pt_metadata};
use crate::train::checkpoint::RunDir;

/// How the experts are combined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// Decoder layers whose tensors come from the language expert (inclusive ranges).
    pub swap_layers: Vec<RangeInclusive<usize>>,
    /// Reverts each expert's updates below this quantile of their magnitude, per tensor.
    pub revert_below: Option<f64>,
    /// Task-arithmetic weights of (task, language), when no layers are swapped.
    pub weights: [f64; 2],
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            swap_layers: Vec::new(),
            revert_below: None,
            weights: [1.0, 1.0],
        }
    }
}

/// Reads `--swap-layers`: comma-separated layers or inclusive ranges (`0-3,28-31`), refused
/// when a range is reversed or two overlap. `layers` (the model's count) bounds them when given.
pub fn parse_layer_ranges(text: &str, layers: Option<usize>) -> Result<Vec<RangeInclusive<usize>>> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim) {
        let number = |s: &str| {
            s.trim().parse::<usize>().map_err(|_| {
                CoreError::Invalid(format!(
                    "--swap-layers {text:?}: `{part}` is not a layer or a range; give layers or ranges such as 0-3,28-31"
                ))
            })
        };
        ranges.push(match part.split_once('-') {
            Some((a, b)) => number(a)?..=number(b)?,
            None => number(part)?..=number(part)?,
        });
    }
    check_layer_ranges(&ranges, layers)?;
    Ok(ranges)
}

/// Refuses ranges that run backwards, overlap, or (with `layers`, the model's count) reach past
/// the last layer.
pub fn check_layer_ranges(ranges: &[RangeInclusive<usize>], layers: Option<usize>) -> Result<()> {
    let bad = |why: String| {
        CoreError::Invalid(format!(
            "--swap-layers: {why}; give layers or ranges such as 0-3,28-31"
        ))
    };
    for r in ranges {
        if r.start() > r.end() {
            return Err(bad(format!("{}-{} runs backwards", r.start(), r.end())));
        }
        if let Some(n) = layers
            && *r.end() >= n
        {
            return Err(bad(format!(
                "layer {} is out of range: the model has layers 0-{}",
                r.end(),
                n.saturating_sub(1)
            )));
        }
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| *r.start());
    for pair in sorted.windows(2) {
        if pair[1].start() <= pair[0].end() {
            return Err(bad(format!(
                "{}-{} and {}-{} overlap",
                pair[0].start(),
                pair[0].end(),
                pair[1].start(),
                pair[1].end()
            )));
        }
    }
    Ok(())
}

/// The decoder layer a Hugging Face tensor name belongs to (`model.layers.7.mlp...` -> 7).
pub fn layer_of(name: &str) -> Option<usize> {
    let rest = name.split(".layers.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

/// The `q`-quantile of `values` with linear interpolation between the two nearest ranks (the
/// default of `numpy.quantile` and `torch.quantile`), computed as `torch.lerp` does.
pub fn quantile(values: &[f32], q: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let w = (pos - lo as f64) as f32;
    let (a, b) = (sorted[lo], sorted[hi]);
    if w < 0.5 {
        a + w * (b - a)
    } else {
        b - (b - a) * (1.0 - w)
    }
}

/// Reverts the weak updates of one tensor of an expert: elements whose `|expert - base|` is
/// below the `q`-quantile of them take the base's value (`q >= 1`: all of them). Returns how
/// many were reverted.
pub fn revert_weak(expert: &mut [f32], base: &[f32], q: f64) -> usize {
    if q >= 1.0 {
        expert.copy_from_slice(base);
        return expert.len();
    }
    let delta: Vec<f32> = expert
        .iter()
        .zip(base)
        .map(|(e, b)| (e - b).abs())
        .collect();
    let threshold = quantile(&delta, q);
    let mut reverted = 0;
    for ((e, b), d) in expert.iter_mut().zip(base).zip(&delta) {
        if *d < threshold {
            *e = *b;
            reverted += 1;
        }
    }
    reverted
}

/// What a merge did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub tensors: usize,
    /// Tensors taken from the language expert by the layer swap.
    pub swapped: usize,
    /// Share of each expert's elements reverted to the base (task, language).
    pub reverted: [f64; 2],
}

/// A model to merge: its tensors, where its config and tokenizer come from, the base it was
/// trained from (runs only), and its decoder layer count.
struct Source {
    tensors: HfTensors,
    dir: PathBuf,
    lm: crate::Pretrained,
    base_of_run: Option<PathBuf>,
}

fn load_source(path: &Path, what: &str, device: &Device) -> Result<Source> {
    let (lm, model, base_of_run) = if RunDir::new(path).config().is_file() {
        let (config, _, lm, model) = load_merged(path, "best", device)?;
        (lm, model, Some(config.model))
    } else if path.is_dir() || crate::load::gguf::is_gguf(path) {
        let lm = crate::Pretrained::load(path, device)?;
        let model = lm.model.valid().materialize();
        (lm, model, None)
    } else {
        return Err(CoreError::Invalid(format!(
            "{what} {}: neither a run directory (config.toml) nor a model directory\nHINT: give the `out` of a `clo train` run or a Hugging Face model directory",
            path.display()
        )));
    };
    let bytes = super::safetensors_bytes(&model, &lm.config.decoder)?;
    let tensors = read_tensors(&bytes, path)?;
    Ok(Source {
        tensors,
        dir: lm.dir.clone(),
        lm,
        base_of_run,
    })
}

fn read_tensors(bytes: &[u8], from: &Path) -> Result<HfTensors> {
    let fail = |message: String| CoreError::Safetensors {
        path: from.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| fail(e.to_string()))?;
    let mut out = HfTensors::new();
    for (name, view) in st.tensors() {
        let values = f32_values(&view).ok_or_else(|| {
            fail(format!(
                "tensor {name}: {:?} is not a float type",
                view.dtype()
            ))
        })?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Whether a run's base is the merge's base: the same path, or the same weights
/// (`base_digest`, of the base as loaded).
fn same_base(run_base: &Path, base: &Path, base_digest: &str, device: &Device) -> Result<bool> {
    if let (Ok(a), Ok(b)) = (run_base.canonicalize(), base.canonicalize())
        && a == b
    {
        return Ok(true);
    }
    let lm = crate::Pretrained::load(run_base, device)?;
    Ok(crate::train::reference::weights_digest(&lm.model.valid()) == base_digest)
}

/// Checks a recipe before anything is loaded.
pub fn check_recipe(recipe: &Recipe) -> Result<()> {
    if let Some(q) = recipe.revert_below
        && !(q > 0.0 && q < 1.0)
    {
        return Err(CoreError::Invalid(format!(
            "--revert-below {q}: give a quantile strictly between 0 and 1 (0.3 reverts the weakest 30% of each tensor's updates)"
        )));
    }
    if recipe.weights.iter().any(|w| !w.is_finite()) {
        return Err(CoreError::Invalid(
            "--weights: give two finite numbers, the task's and the language's".into(),
        ));
    }
    Ok(())
}

/// Merges `task` and `language` (run or model directories fine-tuned from `base`) by `recipe`
/// into the model directory `out`. Everything is checked before anything is written; an
/// existing `out` is replaced only when an earlier `clo export` or `clo merge` wrote it (or with
/// `force`, moved aside).
pub fn merge(
    base: &Path,
    task: &Path,
    language: &Path,
    recipe: &Recipe,
    out: &Path,
    device: &Device,
    force: bool,
) -> Result<MergeReport> {
    check_recipe(recipe)?;
    let base_src = load_source(base, "--base", device)?;
    check_layer_ranges(
        &recipe.swap_layers,
        Some(base_src.lm.config.decoder.num_layers),
    )?;
    let mut experts = [
        load_source(task, "--task", device)?,
        load_source(language, "--language", device)?,
    ];
    let base_digest = crate::train::reference::weights_digest(&base_src.lm.model.valid());
    for (expert, (flag, path)) in experts
        .iter()
        .zip([("--task", task), ("--language", language)])
    {
        if let Some(run_base) = &expert.base_of_run
            && !same_base(run_base, base, &base_digest, device)?
        {
            return Err(CoreError::Invalid(format!(
                "{flag} {}: the run was trained from {}, whose weights differ from --base {}\nHINT: merge runs of the same base model",
                path.display(),
                run_base.display(),
                base.display()
            )));
        }
        check_same_tensors(&base_src.tensors, &expert.tensors, flag, path)?;
    }
    claim_model_out(out, force, false)?;

    let total: usize = base_src
        .tensors
        .values()
        .map(|(_, v)| v.len())
        .sum::<usize>()
        .max(1);
    let mut reverted = [0.0; 2];
    if let Some(q) = recipe.revert_below {
        for (e, expert) in experts.iter_mut().enumerate() {
            let mut n = 0;
            for (name, (_, values)) in expert.tensors.iter_mut() {
                n += revert_weak(values, &base_src.tensors[name].1, q);
            }
            reverted[e] = n as f64 / total as f64;
        }
    }
    let [task_src, lang_src] = &experts;
    let mut merged = HfTensors::new();
    let mut swapped = 0;
    for (name, (shape, b)) in &base_src.tensors {
        let t = &task_src.tensors[name].1;
        let l = &lang_src.tensors[name].1;
        let values = if !recipe.swap_layers.is_empty() {
            let from_language =
                layer_of(name).is_some_and(|i| recipe.swap_layers.iter().any(|r| r.contains(&i)));
            swapped += usize::from(from_language);
            if from_language { l.clone() } else { t.clone() }
        } else {
            let [wt, wl] = recipe.weights.map(|w| w as f32);
            b.iter()
                .zip(t)
                .zip(l)
                .map(|((b, t), l)| b + wt * (t - b) + wl * (l - b))
                .collect()
        };
        merged.insert(name.clone(), (shape.clone(), values));
    }

    let mut hf_config = hf_config_of(&task_src.dir)?;
    as_f32_config(&mut hf_config);
    let recipe_json = json!({
        "base": base,
        "task": task,
        "language": language,
        "swap_layers": recipe.swap_layers.iter().map(|r| format!("{}-{}", r.start(), r.end())).collect::<Vec<_>>(),
        "revert_below": recipe.revert_below,
        "weights": if recipe.swap_layers.is_empty() { json!(recipe.weights) } else { Value::Null },
    });
    hf_config["clo_merge"] = recipe_json.clone();
    let bytes = f32_safetensors(
        merged
            .iter()
            .map(|(n, (shape, values))| (n.clone(), shape.as_slice(), values.as_slice())),
        pt_metadata(),
    )
    .map_err(|e| CoreError::Internal(format!("writing the merged tensors: {e}")))?;
    replace_dir_atomically(out, |tmp| {
        write_atomically(&tmp.join("model.safetensors"), &bytes)?;
        write_json_atomically(&tmp.join("config.json"), &hf_config)?;
        write_json_atomically(
            &tmp.join(EXPORT_MARKER),
            &json!({"kind": "merge", "recipe": recipe_json}),
        )?;
        tokenizer_files(&task_src.dir, &task_src.lm.tokenizer, tmp)
    })?;
    tracing::info!(out = %out.display(), "merged model written");
    Ok(MergeReport {
        tensors: merged.len(),
        swapped,
        reverted,
    })
}

fn check_same_tensors(base: &HfTensors, expert: &HfTensors, flag: &str, path: &Path) -> Result<()> {
    for (name, (shape, _)) in base {
        match expert.get(name) {
            Some((s, _)) if s == shape => {}
            Some((s, _)) => {
                return Err(CoreError::Invalid(format!(
                    "{flag} {}: tensor {name} is {s:?}, the base's is {shape:?}\nHINT: merge models of the base's architecture and size",
                    path.display()
                )));
            }
            None => {
                return Err(CoreError::Invalid(format!(
                    "{flag} {}: has no tensor {name}, which the base has\nHINT: merge models of the base's architecture",
                    path.display()
                )));
            }
        }
    }
    if let Some(extra) = expert.keys().find(|k| !base.contains_key(*k)) {
        return Err(CoreError::Invalid(format!(
            "{flag} {}: tensor {extra} is not in the base\nHINT: merge models of the base's architecture",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
