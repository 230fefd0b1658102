//! A run's directory: what may live in it, its lock, and its `config.toml` on a fresh start
//! or a resume.

use std::path::PathBuf;

use super::TrainOptions;
use crate::error::{CoreError, Result};
use crate::fsutil::{
    Claim, DirLock, claim_output, holds_only, refuse_run_dir_output, remove_stale_temps,
    write_atomically,
};
use crate::train::checkpoint::RunDir;
use crate::train::config::RunConfig;

/// Entries a run directory may hold: what `clo train` writes and what `clo serve` adds.
fn is_run_entry(name: &str) -> bool {
    matches!(
        name,
        "config.toml"
            | "metrics.jsonl"
            | "summary.json"
            | "checkpoints"
            | "best"
            | ".lock"
            | "run.toml"
            | "request.json"
            | "status.json"
    ) || (name.starts_with("reference-") && name.ends_with(".json"))
}

/// Takes the run directory's lock, removes what killed writers left, and creates the run
/// directory and `config.toml`; or, when resuming, checks the saved config and returns the
/// newest checkpoint. Refuses an `out` that lies inside another run, holds a run (without
/// resume) or holds files clo did not write, unless `force` (which moves the old one aside).
pub(super) fn prepare_run_dir(
    config: &RunConfig,
    opts: &TrainOptions,
    run: &RunDir,
) -> Result<(Option<PathBuf>, DirLock)> {
    refuse_run_dir_output(&run.root, Some(run.root.as_path()))?;
    let mut lock = if run.root.is_dir() {
        Some(DirLock::acquire(&run.root)?)
    } else {
        None
    };
    if !opts.resume {
        let has_steps = std::fs::metadata(run.metrics()).is_ok_and(|m| m.len() > 0);
        let holds_run = run.latest_checkpoint().is_some() || has_steps;
        if holds_run && !opts.force {
            return Err(CoreError::Invalid(format!(
                "{} already holds a run\nHINT: continue it with the `resume` setting, start over with the `force` setting (the old run is moved aside), or choose another `out` setting",
                run.root.display()
            )));
        }
        let claim = claim_output(&run.root, "clo train", opts.force, |dir| {
            !holds_run && holds_only(dir, is_run_entry)
        })?;
        if let Claim::MovedAside(old) = claim {
            tracing::warn!(old = %old.display(), "the old contents of the run directory were moved aside");
            lock = None;
        }
    }
    let lock = match lock {
        Some(lock) => lock,
        None => DirLock::acquire(&run.root)?,
    };
    // Temporaries of a writer killed mid-write: with the lock held, none is anyone's.
    remove_stale_temps(&run.root, true);
    remove_stale_temps(&run.checkpoints(), true);
    let latest = prepare_run_files(config, opts, run)?;
    Ok((latest, lock))
}

/// Creates the run directory and `config.toml`, or, when resuming, checks the saved config and
/// returns the newest checkpoint.
fn prepare_run_files(
    config: &RunConfig,
    opts: &TrainOptions,
    run: &RunDir,
) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(&run.root).map_err(|e| CoreError::io("create", &run.root, e))?;
    let saved = run.config();
    if opts.resume {
        if saved.exists() {
            let previous = RunConfig::from_file(&saved)?;
            if &previous != config {
                return Err(CoreError::Invalid(format!(
                    "{}: resuming continues the run as configured there, and the given settings differ\nHINT: resume {} with the `resume` setting and no other settings",
                    saved.display(),
                    run.root.display()
                )));
            }
        }
        let latest = run.latest_checkpoint();
        if latest.is_none() {
            tracing::warn!(dir = %run.root.display(), "no checkpoint to resume from: starting at step 0");
            let _ = std::fs::remove_file(run.metrics());
        }
        write_atomically(&saved, config.to_toml().as_bytes())?;
        return Ok(latest);
    }
    // A fresh start (prepare_run_dir refused a directory holding steps): no old lines.
    let _ = std::fs::remove_file(run.metrics());
    write_atomically(&saved, config.to_toml().as_bytes())?;
    Ok(None)
}
