//! The training loop: reference pass, AdamW with warmup + cosine, gradient accumulation, global
//! grad-norm clipping, validation with a best checkpoint, atomic resumable checkpoints and
//! `metrics.jsonl`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

mod dir;

use self::dir::prepare_run_dir;
use super::batch::tokenize_quads;
use super::batcher::{Batcher, split};
use super::checkpoint::{RunDir, RunState, load_optimizer, load_trainable, read_state};
use super::config::{Method, RunConfig};
use super::data::read_quadruples;
use super::driver::{Flow, MetricsLog, StepDone, Stopped, run_steps};
pub use super::objective::objective;
use super::parallel::Collective;
use super::reference::{
    CachedReference, ReferenceCache, cache_key, read_run_reference, reference_logps_on,
    weights_digest,
};
use super::step::Trainer;
use crate::Pretrained;
use crate::error::{CoreError, Result};
use crate::fsutil::{write_atomically, write_json_atomically};
use crate::load::models::{CausalLm, ModelConfig};
use crate::load::tokenizer::ChatTokenizer;

/// How a run is driven (not part of its config).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue the run in `out` from its newest checkpoint.
    pub resume: bool,
    /// Where reference log-probs are cached across runs.
    pub cache_dir: PathBuf,
    /// Set to stop after the current step (a checkpoint is written first).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Checkpoints kept besides `best` (the newest ones).
    pub keep_checkpoints: usize,
    /// Start afresh even where `out` holds something else (a finished run, other files): the
    /// old `out` is moved aside (`OUT.replaced-TIME`), never deleted.
    pub force: bool,
    /// Data parallelism: devices besides the main one, each holding a replica of the model
    /// (plain devices; see [`super::parallel`]). Empty: one device.
    pub replicas: Vec<Device>,
    /// Data parallelism across processes (MPI): gradients are summed over them; only rank 0
    /// writes files.
    pub collective: Option<Arc<dyn Collective>>,
}

impl TrainOptions {
    pub fn new(out: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            resume: false,
            cache_dir: cache_dir.into(),
            cancel: None,
            keep_checkpoints: 2,
            force: false,
            replicas: Vec::new(),
            collective: None,
        }
    }
}

pub use super::metrics::StepMetrics;

/// What the run reports while it works (the binary draws progress bars from it).
#[derive(Debug)]
pub enum Progress<'a> {
    Prepared {
        train: usize,
        val: usize,
        dropped: usize,
    },
    Reference {
        stage: &'static str,
        done: usize,
        total: usize,
        cached: bool,
    },
    Stage {
        stage: &'static str,
        total_steps: usize,
        done_steps: usize,
    },
    Step(&'a StepMetrics),
    Checkpoint(&'a std::path::Path),
}

/// Written to `RUN/summary.json` when a run ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub method: Method,
    pub train_quadruples: usize,
    pub val_quadruples: usize,
    /// Quadruples dropped because a prompt alone reaches `max_len`.
    pub dropped_long_prompts: usize,
    pub steps: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub best_step: Option<usize>,
    pub best_val_loss: Option<f64>,
    /// The directory `clo export` uses by default.
    pub result: PathBuf,
    pub wall_s: f64,
    pub reference_cached: Vec<bool>,
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished(RunSummary),
    /// Stopped by [`TrainOptions::cancel`]; resumable from `checkpoint`.
    Cancelled {
        step: usize,
        checkpoint: PathBuf,
    },
}

/// What a run's parts share: its settings, options, directory, and whether this process writes
/// files (rank 0, or the only process).
#[derive(Clone, Copy)]
struct RunContext<'a> {
    config: &'a RunConfig,
    opts: &'a TrainOptions,
    run: &'a RunDir,
    writer: bool,
}

/// Reference log-probs of a stage: `[example][block]` for the training and validation sets, and
/// whether they came from a cache.
type StageReference = (Vec<Vec<f32>>, Vec<Vec<f32>>, bool);

/// Reference log-probs of a stage for (train, val): from the run directory when resuming, else
/// from the shared cache, else computed now.
fn stage_reference(
    tokenizer: &ChatTokenizer,
    model: &CausalLm,
    stage: Method,
    [train, val]: [&Batcher; 2],
    ctx: &RunContext<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<StageReference> {
    let RunContext {
        config,
        opts,
        run,
        writer,
    } = *ctx;
    let run_file = run.reference(stage.name());
    if opts.resume && run_file.exists() {
        let (train, val) = read_run_reference(&run_file)?.into_train_val();
        return Ok((train, val, true));
    }
    let reference = model.valid().materialize();
    let key = cache_key(
        &weights_digest(&reference),
        tokenizer.template_source(),
        config.max_len,
        &[train.examples(), val.examples()],
    );
    let cache = ReferenceCache::new(&opts.cache_dir);
    let (entry, cached) = match cache.get(&key) {
        Some(entry) => {
            tracing::info!(key, "reference log-probs from the cache");
            progress(Progress::Reference {
                stage: stage.name(),
                done: train.len() + val.len(),
                total: train.len() + val.len(),
                cached: true,
            });
            (entry, true)
        }
        None => {
            let total = train.len() + val.len();
            let models: Vec<CausalLm> = std::iter::once(reference.clone())
                .chain(opts.replicas.iter().map(|d| reference.clone().fork(d)))
                .collect();
            let mut sets = Vec::new();
            let mut offset = 0;
            for set in [train, val] {
                let mut report = |done: usize, _: usize| {
                    progress(Progress::Reference {
                        stage: stage.name(),
                        done: offset + done,
                        total,
                        cached: false,
                    })
                };
                sets.push(reference_logps_on(&models, set, &mut report));
                offset += set.len();
            }
            let entry = CachedReference { key, sets };
            match if writer {
                cache.put(&entry)
            } else {
                Ok(PathBuf::new())
            } {
                Ok(path) => tracing::info!(path = %path.display(), "reference log-probs cached"),
                Err(e) => tracing::warn!("reference log-probs not cached: {e}"),
            }
            (entry, false)
        }
    };
    if writer {
        write_atomically(
            &run_file,
            serde_json::to_string(&entry)
                .expect("reference serializes")
                .as_bytes(),
        )?;
    }
    let (train, val) = entry.into_train_val();
    Ok((train, val, cached))
}

/// Runs (or resumes) a training run. `device` is a plain device; training uses its autodiff
/// twin. Returns when every stage is done, or when cancelled.
pub fn train(
    config: &RunConfig,
    opts: &TrainOptions,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let started = Instant::now();
    config.validate_for_model()?;
    // Bad data stops the run before anything is written.
    let quads = read_quadruples(&config.data)?;
    let run = RunDir::new(&opts.out);
    // Across processes only rank 0 writes; the others read the checkpoint it resumes from.
    let writer = opts.collective.as_ref().is_none_or(|c| c.rank() == 0);
    // Held until this function returns: one writer per run directory.
    let (resume_from, _lock) = if writer {
        let (from, lock) = prepare_run_dir(config, opts, &run)?;
        (from, Some(lock))
    } else {
        (opts.resume.then(|| run.latest_checkpoint()).flatten(), None)
    };
    let mut state = match &resume_from {
        Some(dir) => read_state(dir)?,
        None => RunState {
            stage: 0,
            stage_step: 0,
            global_step: 0,
            metrics_bytes: 0,
            best_val_loss: None,
            best_step: None,
            wall_s: 0.0,
        },
    };
    let wall_before = state.wall_s;
    // Drop metrics lines written after the checkpoint we resume from.
    if let Some(c) = &opts.collective {
        agree_on_start(c.as_ref(), state.global_step)?;
    }
    let metrics_path = run.metrics();
    let mut metrics = if writer {
        MetricsLog::open(&metrics_path, state.metrics_bytes)?
    } else {
        MetricsLog::discard(state.metrics_bytes)
    };
    // The run's first loss, when the steps before this resume logged it.
    let mut first_loss = if state.metrics_bytes > 0 {
        first_logged_loss(&metrics_path)
    } else {
        None
    };

    let ad = config.autodiff_device(device);
    device.seed(config.seed);
    ad.seed(config.seed);
    let Pretrained {
        model: base,
        tokenizer,
        config: ModelConfig {
            decoder: model_config,
            ..
        },
        ..
    } = Pretrained::load(&config.model, &ad)?;
    let (tokenized, dropped) = tokenize_quads(&tokenizer, &quads, config.max_len)?;
    if dropped > 0 {
        tracing::warn!(
            dropped,
            max_len = config.max_len,
            "quadruples dropped: a prompt alone reaches max_len"
        );
    }
    let data = split(tokenized, dropped, config)?;
    progress(Progress::Prepared {
        train: data.train.len(),
        val: data.val.len(),
        dropped,
    });
    let mut model = config.trainable_model(base, &ad)?;
    if let Some(dir) = &resume_from {
        load_trainable(&mut model, &dir.join("trainable.bpk"))?;
        tracing::info!(dir = %dir.display(), step = state.global_step, "resuming");
    }

    let stages = config.method.stages();
    let mut last_loss = None;
    let mut reference_cached = Vec::new();
    let mut last_checkpoint = resume_from.clone();
    for (s, &stage) in stages.iter().enumerate().skip(state.stage) {
        let last_stage = s + 1 == stages.len();
        let train_ex = Batcher::new(stage, &data.train, config, s);
        let val_ex = Batcher::new(stage, &data.val, config, s);
        // The step's memory, now that the longest row is known, before any step allocates.
        let longest = data
            .train
            .iter()
            .map(|q| {
                q.en_prompt.len().max(q.tgt_prompt.len())
                    + q.en_response.len().max(q.tgt_response.len())
            })
            .max()
            .unwrap_or(0)
            .min(config.max_len);
        config.check_step_fits(
            &model_config,
            config.batch_size.min(train_ex.len()) * train_ex.examples().ref_width(),
            longest,
        )?;
        let (train_refs, val_refs) = if stage.needs_reference() {
            let ctx = RunContext {
                config,
                opts,
                run: &run,
                writer,
            };
            let (t, v, cached) = stage_reference(
                &tokenizer,
                &model,
                stage,
                [&train_ex, &val_ex],
                &ctx,
                progress,
            )?;
            reference_cached.push(cached);
            (t, v)
        } else {
            (Vec::new(), Vec::new())
        };

        let (total, schedule) = train_ex.schedule(config);
        let eval_every = config.eval_every.unwrap_or((total / 10).max(1));
        let save_every = config.save_every.unwrap_or(eval_every);
        let mut trainer = Trainer::for_stage(stage, config).with_replicas(
            &opts
                .replicas
                .iter()
                .map(|d| config.autodiff_device(d))
                .collect::<Vec<_>>(),
        );
        if let Some(c) = &opts.collective {
            trainer = trainer.with_collective(c.clone());
        }
        if let Some(dir) = &resume_from
            && state.stage == s
            && state.stage_step > 0
        {
            load_optimizer(dir, &mut trainer)?;
        }
        if state.stage != s {
            state.stage = s;
            state.stage_step = 0;
        }
        progress(Progress::Stage {
            stage: stage.name(),
            total_steps: total,
            done_steps: state.stage_step,
        });

        let mut plan = |step: usize| train_ex.step(step, &train_refs);
        let first_step = state.stage_step;
        let mut cancelled = false;
        let mut after = |model: &CausalLm, trainer: &Trainer, done: StepDone| -> Result<Flow> {
            let report = &done.report;
            let loss = report.loss;
            state.stage_step = done.step + 1;
            state.wall_s = wall_before + started.elapsed().as_secs_f64();
            let finished = state.stage_step;
            // Validation chooses `best`, which only the writing process saves.
            let validate =
                writer && !val_ex.is_empty() && (finished % eval_every == 0 || finished == total);
            let val_loss = if validate {
                Some(trainer.evaluate(&model.valid(), &val_ex.all(&val_refs))?)
            } else {
                None
            };
            let line = StepMetrics {
                val_loss,
                peak_mem_bytes: memory_devices_peak(device, &opts.replicas),
                ..StepMetrics::of_step(
                    state.global_step,
                    stage.name(),
                    done.epoch,
                    report,
                    done.lr,
                    done.seconds,
                )
            };
            first_loss.get_or_insert(loss);
            last_loss = Some(loss);
            metrics.append(&line)?;
            state.metrics_bytes = metrics.bytes();
            state.global_step += 1;
            progress(Progress::Step(&line));

            if last_stage
                && let Some(v) = val_loss
                && state.best_val_loss.is_none_or(|b| v < b)
            {
                state.best_val_loss = Some(v);
                state.best_step = Some(line.step);
                if writer {
                    run.save_best(config, &state, model)?;
                }
            }
            cancelled = opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed));
            if writer && (finished % save_every == 0 || finished == total || cancelled) {
                // At the end of a stage the checkpoint points at the next one, which starts
                // from this model with a fresh optimizer.
                let saved = if finished == total && !last_stage {
                    RunState {
                        stage: s + 1,
                        stage_step: 0,
                        ..state.clone()
                    }
                } else {
                    state.clone()
                };
                let dir = run.save_checkpoint(
                    config,
                    &saved,
                    model,
                    trainer.optimizer(),
                    opts.keep_checkpoints,
                )?;
                progress(Progress::Checkpoint(&dir));
                last_checkpoint = Some(dir);
            }
            Ok(if cancelled {
                Flow::Stop
            } else {
                Flow::Continue
            })
        };
        let (trained, stopped) = run_steps(
            model,
            &mut trainer,
            &schedule,
            first_step..total,
            &mut plan,
            &mut after,
        )?;
        model = trained;
        match stopped {
            Stopped::Done => {}
            Stopped::Asked { .. } => {
                return Ok(Outcome::Cancelled {
                    step: state.global_step,
                    checkpoint: last_checkpoint.unwrap_or_else(|| run.checkpoints()),
                });
            }
            Stopped::NonFinite { what, .. } => {
                // The update was not applied: the weights are those before this step, kept as
                // the last good state.
                state.wall_s = wall_before + started.elapsed().as_secs_f64();
                let dir = if writer {
                    run.save_checkpoint(
                        config,
                        &state,
                        &model,
                        trainer.optimizer(),
                        opts.keep_checkpoints,
                    )?
                } else {
                    run.checkpoints()
                };
                return Err(CoreError::NonFinite {
                    step: state.global_step,
                    stage: stage.name(),
                    what,
                    checkpoint: dir,
                });
            }
        }
    }

    let result = if state.best_step.is_some() {
        run.best()
    } else {
        last_checkpoint.clone().unwrap_or_else(|| run.checkpoints())
    };
    let summary = RunSummary {
        method: config.method,
        train_quadruples: data.train.len(),
        val_quadruples: data.val.len(),
        dropped_long_prompts: data.dropped,
        steps: state.global_step,
        first_loss,
        last_loss,
        best_step: state.best_step,
        best_val_loss: state.best_val_loss,
        result,
        wall_s: wall_before + started.elapsed().as_secs_f64(),
        reference_cached,
    };
    if writer {
        write_json_atomically(&run.summary(), &summary)?;
    }
    Ok(Outcome::Finished(summary))
}

/// The fullest device's peak memory (see [`super::memory`]).
fn memory_devices_peak(device: &Device, replicas: &[Device]) -> Option<u64> {
    let all: Vec<Device> = std::iter::once(device.clone())
        .chain(replicas.iter().cloned())
        .collect();
    super::memory::peak_bytes_of(&all)
}

/// Checks that every process starts from the same step (they resume from the checkpoint each
/// finds in `out`: every host must see the same run directory).
fn agree_on_start(collective: &dyn Collective, step: usize) -> Result<()> {
    let mut v = [step as f32, 1.0];
    collective.all_reduce_sum(&mut v)?;
    let size = collective.size() as f32;
    if v[1] != size || (v[0] - step as f32 * size).abs() > 0.5 {
        return Err(CoreError::Invalid(format!(
            "the {} processes start from different steps (this one, rank {}, from step {step}): every host must see the same run directory (a shared filesystem) with the same checkpoints",
            collective.size(),
            collective.rank()
        )));
    }
    Ok(())
}

/// The `loss` of the first line of `metrics.jsonl`.
fn first_logged_loss(path: &std::path::Path) -> Option<f64> {
    let mut lines = crate::data::jsonl::Lines::open(path, "run metrics").ok()?;
    let (_, line) = lines.next_line()?.ok()?;
    serde_json::from_str::<StepMetrics>(line)
        .ok()
        .map(|m| m.loss)
}
