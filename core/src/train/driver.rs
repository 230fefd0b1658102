//! What every training run shares around the [`Trainer`] step: the step loop (batches, the
//! learning-rate schedule, a stop on non-finite numbers, timing) and the append-only metrics log
//! that a resume truncates back to its checkpoint. `clo train` ([`super::run`]) and
//! `clo pretrain` ([`super::pretrain`]) both drive their steps through [`run_steps`] and keep
//! their checkpoints in one format ([`super::checkpoint::write_checkpoint`]).
//!
//! The browser has its own (async) loop over [`Trainer::step_async`]: this one blocks.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::optim::Schedule;
use super::step::{MicroBatch, StepReport, Trainer};
use crate::error::{CoreError, Result};
use crate::load::models::CausalLm;

/// One step the loop has taken.
#[derive(Debug)]
pub struct StepDone {
    /// The step's index in the schedule (0-based).
    pub step: usize,
    /// The epoch its batches came from.
    pub epoch: usize,
    pub lr: f64,
    pub report: StepReport,
    /// Seconds the step took (forward, backward, update, read-back).
    pub seconds: f64,
}

/// What the caller tells the loop after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// How [`run_steps`] ended.
#[derive(Debug)]
pub enum Stopped {
    /// Every step of the range is done.
    Done,
    /// The caller returned [`Flow::Stop`] after `step`.
    Asked { step: usize },
    /// Step `step` had a non-finite loss or gradient norm; its update was not applied, so the
    /// returned model is the one before it.
    NonFinite {
        step: usize,
        what: &'static str,
        report: StepReport,
    },
}

/// The batches of a step: `(epoch, micro-batches)`.
pub type Plan<'a> = dyn FnMut(usize) -> (usize, Vec<MicroBatch>) + 'a;

/// What the caller does after each applied step (log, validate, checkpoint, cancel).
pub type AfterStep<'a> = dyn FnMut(&CausalLm, &Trainer, StepDone) -> Result<Flow> + 'a;

/// Runs the steps `steps` of a schedule: for each, the micro-batches of `plan`, one
/// [`Trainer::step`] at the schedule's learning rate, then `after`. Stops early when a step is
/// non-finite (before `after`) or when `after` says so.
pub fn run_steps(
    mut model: CausalLm,
    trainer: &mut Trainer,
    schedule: &Schedule,
    steps: Range<usize>,
    plan: &mut Plan<'_>,
    after: &mut AfterStep<'_>,
) -> Result<(CausalLm, Stopped)> {
    for step in steps {
        let t0 = Instant::now();
        let (epoch, batches) = plan(step);
        let lr = schedule.lr_at(step);
        let (next, report) = trainer.step(model, &batches, lr)?;
        model = next;
        if let Some(what) = report.non_finite() {
            return Ok((model, Stopped::NonFinite { step, what, report }));
        }
        let done = StepDone {
            step,
            epoch,
            lr,
            report,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if after(&model, trainer, done)? == Flow::Stop {
            return Ok((model, Stopped::Asked { step }));
        }
    }
    Ok((model, Stopped::Done))
}

/// An append-only JSON-lines log of steps (`metrics.jsonl`) that knows how many of its bytes
/// belong to the steps done, so that a checkpoint can record it and a resume cut the lines
/// written after that checkpoint.
pub struct MetricsLog {
    path: PathBuf,
    /// None: lines are counted, not written (a process that does not write the run's files).
    file: Option<File>,
    bytes: u64,
}

impl MetricsLog {
    /// Opens (or creates) `path` keeping its first `keep_bytes` bytes.
    pub fn open(path: &Path, keep_bytes: u64) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| CoreError::io("open", path, e))?;
        file.set_len(keep_bytes)
            .map_err(|e| CoreError::io("truncate", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            bytes: keep_bytes,
        })
    }

    /// A log that writes nothing (data-parallel ranks other than 0), starting at `bytes`.
    pub fn discard(bytes: u64) -> Self {
        Self {
            path: PathBuf::new(),
            file: None,
            bytes,
        }
    }

    /// Appends one line (flushed).
    pub fn append(&mut self, line: &impl Serialize) -> Result<()> {
        let mut text = serde_json::to_string(line).expect("metrics serialize");
        text.push('\n');
        if let Some(file) = &mut self.file {
            file.write_all(text.as_bytes())
                .and_then(|_| file.flush())
                .map_err(|e| CoreError::io("append to", &self.path, e))?;
        }
        self.bytes += text.len() as u64;
        Ok(())
    }

    /// Bytes of the log so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
