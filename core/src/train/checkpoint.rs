//! Run directory layout and atomic checkpoints.
//!
//! ```text
//! RUN/config.toml                  the resolved run config
//! RUN/metrics.jsonl                one line per optimizer step (see StepMetrics)
//! RUN/reference-<stage>.json       the stage's reference log-probs (also in the shared cache)
//! RUN/checkpoints/step-00000050/   resumable: trainable.bpk, optimizer.bpk, state.json, config.toml
//! RUN/best/                        lowest validation loss: trainable.bpk, state.json, config.toml
//! RUN/summary.json                 written when the run ends
//! ```
//!
//! Checkpoints hold only the trainable tensors (with their parameter ids, so the optimizer state
//! re-attaches on resume); the frozen rest is the base model of `config.toml`. Every checkpoint
//! directory is filled under a temporary name and renamed when complete.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot, PathFilter};
use serde::{Deserialize, Serialize};

use super::config::RunConfig;
use super::step::Trainer;
use crate::error::{CoreError, Result};
use crate::fsutil::{replace_dir_atomically, write_atomically, write_json_atomically};
use crate::load::models::CausalLm;

/// Where a run is in its schedule when a checkpoint is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Index of the stage in `method.stages()`.
    pub stage: usize,
    /// Optimizer steps done in that stage.
    pub stage_step: usize,
    /// Optimizer steps done over all stages (the next metrics line's `step`).
    pub global_step: usize,
    /// Bytes of `metrics.jsonl` that belong to the steps done.
    pub metrics_bytes: u64,
    /// Lowest validation loss of the last stage so far, and its global step.
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// Seconds the run has trained so far, over every segment (resumes add to it).
    #[serde(default)]
    pub wall_s: f64,
}

/// Dotted paths of the parameters that require gradients (what a checkpoint stores).
pub fn trainable_paths(model: &CausalLm) -> Vec<String> {
    struct Paths {
        stack: Vec<String>,
        out: Vec<String>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                self.out.push(self.stack.join("."));
            }
        }
    }
    let mut v = Paths {
        stack: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

fn store_error(path: &Path, e: impl std::fmt::Display, hint: &str) -> CoreError {
    CoreError::Invalid(format!("{}: {e}\nHINT: {hint}", path.display()))
}

/// Saves the trainable tensors of `model` (with parameter ids) to `path` (burnpack).
pub fn save_trainable(model: &CausalLm, path: &Path) -> Result<()> {
    let paths = trainable_paths(model);
    let mut store = BurnpackStore::from_file(path)
        .auto_extension(false)
        .overwrite(true)
        .with_filter(PathFilter::new().with_full_paths(paths));
    model
        .save_into(&mut store)
        .map_err(|e| store_error(path, e, "check free disk space and permissions"))
}

/// Loads tensors saved by [`save_trainable`] into `model` (which must have the same trainable
/// set); every saved tensor must find its parameter.
pub fn load_trainable(model: &mut CausalLm, path: &Path) -> Result<()> {
    let mut store = BurnpackStore::from_file(path)
        .auto_extension(false)
        .allow_partial(true);
    let hint = "the checkpoint does not fit this model and trainable set; check RUN/config.toml";
    let result = model
        .load_from(&mut store)
        .map_err(|e| store_error(path, e, hint))?;
    if !result.errors.is_empty() || !result.unused.is_empty() {
        return Err(store_error(
            path,
            format!(
                "errors {:?}, unused tensors {:?}",
                result.errors, result.unused
            ),
            hint,
        ));
    }
    Ok(())
}

/// The run directory and its files.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    pub fn best(&self) -> PathBuf {
        self.root.join("best")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn reference(&self, stage: &str) -> PathBuf {
        self.root
            .join(format!("reference-{}.json", stage.replace('+', "-")))
    }

    /// Complete checkpoints, oldest first.
    pub fn list_checkpoints(&self) -> Vec<(usize, PathBuf)> {
        let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix("step-")?.parse().ok()?;
                e.path()
                    .join("state.json")
                    .exists()
                    .then(|| (step, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        self.list_checkpoints().pop().map(|(_, p)| p)
    }

    /// Writes a resumable checkpoint of `model` and `optim` at `state`, then keeps only the
    /// newest `keep` checkpoints.
    pub fn save_checkpoint(
        &self,
        config: &RunConfig,
        state: &RunState,
        model: &CausalLm,
        optim: &ModuleOptimizer,
        keep: usize,
    ) -> Result<PathBuf> {
        let dir = self
            .checkpoints()
            .join(format!("step-{:08}", state.global_step));
        std::fs::create_dir_all(self.checkpoints())
            .map_err(|e| CoreError::io("create", &self.checkpoints(), e))?;
        write_checkpoint(&dir, model, optim, |tmp| write_state(tmp, config, state))?;
        let all = self.list_checkpoints();
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            let _ = std::fs::remove_dir_all(old);
        }
        tracing::info!(dir = %dir.display(), "checkpoint written");
        Ok(dir)
    }

    /// Replaces `RUN/best` with `model`'s trainable tensors.
    pub fn save_best(&self, config: &RunConfig, state: &RunState, model: &CausalLm) -> Result<()> {
        replace_dir_atomically(&self.best(), |tmp| {
            save_trainable(model, &tmp.join("trainable.bpk"))?;
            write_state(tmp, config, state)
        })
    }
}

/// Writes a resumable checkpoint directory, atomically (filled under a temporary name, then
/// renamed): the trainable tensors (`trainable.bpk`), AdamW's state (`optimizer.bpk`) and what
/// `fill` adds (the caller's `state.json`). Every training (`clo train`, `clo pretrain`)
/// checkpoints in this format.
pub fn write_checkpoint(
    dir: &Path,
    model: &CausalLm,
    optim: &ModuleOptimizer,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    replace_dir_atomically(dir, |tmp| {
        save_trainable(model, &tmp.join("trainable.bpk"))?;
        let path = tmp.join("optimizer.bpk");
        optim
            .save(&path)
            .map_err(|e| store_error(&path, e, "check free disk space"))?;
        fill(tmp)
    })
}

/// Loads AdamW's state of a checkpoint written by [`write_checkpoint`] into `trainer`.
pub fn load_optimizer(dir: &Path, trainer: &mut Trainer) -> Result<()> {
    let path = dir.join("optimizer.bpk");
    let optim = trainer.fresh_optimizer().load(&path).map_err(|e| {
        store_error(
            &path,
            e,
            "the checkpoint is damaged; delete it to resume from the one before",
        )
    })?;
    trainer.set_optimizer(optim);
    Ok(())
}

fn write_state(dir: &Path, config: &RunConfig, state: &RunState) -> Result<()> {
    write_json_atomically(&dir.join("state.json"), state)?;
    write_atomically(&dir.join("config.toml"), config.to_toml().as_bytes())
}

/// Reads `state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<RunState> {
    let path = dir.join("state.json");
    let text = crate::error::read_to_string(&path, "checkpoint state")?;
    serde_json::from_str(&text).map_err(|e| {
        CoreError::json(
            &path,
            &e,
            "the checkpoint is damaged; delete this step directory to resume from the one before",
        )
    })
}

/// Loads a trained model: the base of `config.model` with the trainable set applied and the
/// tensors of `weights_dir/trainable.bpk` (a checkpoint or `RUN/best`).
pub fn load_trained(
    config: &RunConfig,
    weights_dir: &Path,
    device: &Device,
) -> Result<crate::Pretrained> {
    let mut lm = crate::Pretrained::load(&config.model, device)?;
    device.seed(config.seed);
    lm.model = config.trainable_set().apply(lm.model)?;
    load_trainable(&mut lm.model, &weights_dir.join("trainable.bpk"))?;
    Ok(lm)
}
