//! Reference log-probs (method.md section 4): computed once per stage, before training, from the
//! model as it stands then, and cached on disk under a hash of (weights, data, template,
//! max_len), so the next run over the same model and data skips the pass.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::batcher::Batcher;
use super::examples::Examples;
use super::parallel::{run_on_replicas, split_ranges};
use crate::error::{CoreError, Result};
use crate::infer::score::{batch_logps, collate};
use crate::load::models::CausalLm;

/// SHA-256 of every tensor of a model (name, shape and f32 bytes, in name order).
pub fn weights_digest(model: &CausalLm) -> String {
    let mut tensors = model.collect(None, None, false);
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = Sha256::new();
    for t in tensors {
        hasher.update(t.name.as_bytes());
        hasher.update(format!("{:?}", t.shape).as_bytes());
        let bytes = t.to_bytes().expect("tensor bytes");
        hasher.update(&bytes[..]);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of a reference pass: the weights, the exact token rows (which carry the data,
/// the chat template and the truncation), the template text and `max_len`.
pub fn cache_key(weights: &str, template: &str, max_len: usize, examples: &[&Examples]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"clo-reference-v1\n");
    hasher.update(weights.as_bytes());
    hasher.update(format!("\n{max_len}\n").as_bytes());
    hasher.update(template.as_bytes());
    for set in examples {
        hasher.update(format!("\n{}:{}\n", set.kind(), set.len()).as_bytes());
        let all: Vec<usize> = (0..set.len()).collect();
        for row in set.rows(&all, max_len) {
            hasher.update(format!("{}:{}:", row.prompt.len(), row.response.len()).as_bytes());
            for id in row.prompt.iter().chain(&row.response) {
                hasher.update(id.to_le_bytes());
            }
        }
    }
    hex(&hasher.finalize())
}

/// Summed log-probs of every reference row of the batcher's examples under `model` (a plain,
/// non-autodiff model, on its own device): `values[i][k]` is block `k` of example `i`.
/// `on_batch(done, total)` reports progress.
pub fn reference_logps(
    model: &CausalLm,
    batcher: &Batcher,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Vec<Vec<f32>> {
    reference_logps_on(std::slice::from_ref(model), batcher, on_batch)
}

/// [`reference_logps`] with the model on several devices (data parallelism): each batch is split
/// by whole examples across `models` (replicas of one model), which work at once.
pub fn reference_logps_on(
    models: &[CausalLm],
    batcher: &Batcher,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Vec<Vec<f32>> {
    let n = batcher.len();
    let mut values = no_values(batcher);
    for chunk in batcher.chunks() {
        let parts: Vec<(usize, &[usize])> = split_ranges(chunk.len(), models.len())
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(d, r)| (d, &chunk[r]))
            .collect();
        let sums = run_on_replicas(parts.clone(), |d, part: &[usize]| {
            let (sums, _) = batch_logps(&models[d], &reference_batch(&models[d], batcher, part));
            let sums: Vec<f32> = sums.into_data().try_into_vec_as().expect("f32 log-probs");
            sums
        });
        for ((_, part), sums) in parts.iter().zip(sums) {
            scatter(&mut values, part, sums);
        }
        on_batch(chunk[chunk.len() - 1] + 1, n);
    }
    values
}

/// [`reference_logps`] of the examples `which` only, into `values` (from [`no_values`]), read
/// back with awaited reads: the browser's pass (a blocking read panics there), which computes
/// each example's values when a step first uses it.
pub async fn reference_logps_async(
    model: &CausalLm,
    batcher: &Batcher,
    which: &[usize],
    values: &mut [Vec<f32>],
) -> Result<()> {
    for chunk in which.chunks(batcher.batch_size()) {
        let (sums, _) = batch_logps(model, &reference_batch(model, batcher, chunk));
        let sums: Vec<f32> = sums
            .into_data_async()
            .await
            .map_err(|e| CoreError::Internal(format!("reading reference log-probs: {e:?}")))?
            .try_into_vec_as()
            .map_err(|e| CoreError::Internal(format!("reference log-probs: {e:?}")))?;
        scatter(values, chunk, sums);
    }
    Ok(())
}

/// Room for every example's reference values (`[example][block]`, zeros).
pub fn no_values(batcher: &Batcher) -> Vec<Vec<f32>> {
    vec![vec![0f32; batcher.examples().ref_width()]; batcher.len()]
}

/// The rows of examples `part`, padded into one batch on `model`'s device.
fn reference_batch(
    model: &CausalLm,
    batcher: &Batcher,
    part: &[usize],
) -> crate::infer::score::Collated {
    collate(
        &batcher.examples().rows(part, batcher.max_len()),
        &model.device(),
    )
}

/// Puts a batch's row sums in their place: rows come in blocks of `part.len()` (see
/// `Examples::rows`), so row `r` is block `r / part.len()` of example `part[r % part.len()]`.
fn scatter(values: &mut [Vec<f32>], part: &[usize], sums: Vec<f32>) {
    for (r, v) in sums.into_iter().enumerate() {
        values[part[r % part.len()]][r / part.len()] = v;
    }
}

/// What a cache file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedReference {
    pub key: String,
    /// One entry per example set given to [`cache_key`], each `[example][block]`.
    pub sets: Vec<Vec<Vec<f32>>>,
}

impl CachedReference {
    /// The (training, validation) sets, as [`super::run`] stores them.
    pub fn into_train_val(mut self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let val = self.sets.pop().unwrap_or_default();
        let train = self.sets.pop().unwrap_or_default();
        (train, val)
    }
}

/// The on-disk cache of reference passes: `DIR/reference/<key>.json`.
#[derive(Debug, Clone)]
pub struct ReferenceCache {
    pub dir: PathBuf,
}

impl ReferenceCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join("reference").join(format!("{key}.json"))
    }

    /// The cached values under `key`, if present and whole.
    pub fn get(&self, key: &str) -> Option<CachedReference> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        match serde_json::from_str::<CachedReference>(&text) {
            Ok(c) if c.key == key => Some(c),
            _ => {
                tracing::warn!(path = %self.path(key).display(), "unreadable reference cache entry ignored");
                None
            }
        }
    }

    pub fn put(&self, value: &CachedReference) -> Result<PathBuf> {
        let path = self.path(&value.key);
        let text = serde_json::to_string(value).expect("reference values serialize");
        crate::fsutil::write_atomically(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// Turns LoRA adapters off: every `lora.b` factor becomes zero, so each adapted weight is its
/// frozen base again (`base + scale * a @ 0`). Used to recover the reference from a LoRA model.
pub fn adapters_off(model: CausalLm) -> CausalLm {
    struct ZeroB {
        path: Vec<String>,
    }
    impl ModuleMapper for ZeroB {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let n = self.path.len();
            if n >= 2 && self.path[n - 2] == "lora" && self.path[n - 1] == "b" {
                param.map(|t| t.zeros_like())
            } else {
                param
            }
        }
    }
    model.map(&mut ZeroB { path: Vec::new() })
}

/// Reads a reference file a run keeps beside its checkpoints.
pub fn read_run_reference(path: &Path) -> Result<CachedReference> {
    let text = crate::error::read_to_string(path, "run reference log-probs")?;
    serde_json::from_str(&text).map_err(|e| {
        CoreError::json(
            path,
            &e,
            "the run's reference file is damaged; delete it and run again without the `resume` setting",
        )
    })
}
