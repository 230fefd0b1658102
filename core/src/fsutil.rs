//! Atomic writes: nothing half-written is ever left under a final name.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

/// A hidden temporary name beside `path`, unique to this process.
pub fn temp_beside(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |w| w.write_all(bytes))
}

/// Writes a file atomically through `fill` (a buffered writer on a temporary file beside
/// `path`, synced, then renamed over `path`).
pub fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io("create", dir, e))?;
    }
    let tmp = temp_beside(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        fill(&mut file)?;
        file.flush()?;
        file.get_ref().sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CoreError::io("write", path, e)
    })
}

/// Writes pretty-printed JSON atomically.
pub fn write_json_atomically(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("values serialize to JSON");
    write_atomically(path, text.as_bytes())
}

/// Fills a fresh temporary directory beside `dir` with `fill`, syncs its files, then moves it to
/// `dir`, replacing an older `dir` only once the new one is complete.
pub fn replace_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_beside(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| CoreError::io("create", &tmp, e))?;
    fill(&tmp)?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| CoreError::io("read", &tmp, e))? {
        let path = entry.map_err(|e| CoreError::io("read", &tmp, e))?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| CoreError::io("sync", &path, e))?;
    }
    let old = dir.with_file_name(format!(
        ".{}.old{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| CoreError::io("move", dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| CoreError::io("move", &tmp, e))?;
    let _ = std::fs::remove_dir_all(&old);
    if let Some(parent) = dir.parent() {
        // Make the rename itself durable.
        let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
    }
    Ok(())
}

/// An OS lock on a directory (`DIR/.lock`, holding the owner's PID), held until dropped. The OS
/// releases it when the process ends, however it ends, so a lock left by a killed process is
/// simply taken over by the next one.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (created if missing), or fails with [`CoreError::Locked`] naming
    /// the PID of the process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        use std::io::{Read, Seek};
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io("create", dir, e))?;
        let path = dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| CoreError::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(CoreError::Locked {
                    path: dir.to_path_buf(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.into()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(CoreError::io("lock", &path, e)),
        }
        let write = |file: &mut std::fs::File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(std::process::id().to_string().as_bytes())?;
            file.flush()
        };
        write(&mut file).map_err(|e| CoreError::io("write", &path, e))?;
        tracing::debug!(dir = %dir.display(), "lock taken");
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The parts of a temporary name written by this module, `.NAME.tmpPID` or `.NAME.oldPID`:
/// `NAME` and the writer's PID.
fn temp_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let (target, pid) = rest
        .rsplit_once(".tmp")
        .or_else(|| rest.rsplit_once(".old"))?;
    if target.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((target, pid.parse().ok()?))
}

/// Whether `name` is a temporary of an atomic write (`.NAME.tmpPID`, `.NAME.oldPID`).
pub fn is_temp_name(name: &str) -> bool {
    temp_name(name).is_some()
}

/// Whether every entry of `dir` has a name that `allowed` accepts (temporaries always are).
pub fn holds_only(dir: &Path, allowed: impl Fn(&str) -> bool) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().all(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            is_temp_name(&name) || allowed(&name)
        })
    })
}

/// Whether process `pid` still runs. Where that cannot be told (no `/proc`), every other
/// process counts as running, so nothing of a live writer is ever removed.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// Removes the temporaries in `dir` for which `stale(NAME, PID)` holds; returns what went.
fn remove_temps(dir: &Path, stale: impl Fn(&str, u32) -> bool) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !temp_name(&name).is_some_and(|(target, pid)| stale(target, pid)) {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a killed writer's temporary");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove a stale temporary: {e}")
            }
        }
    }
    removed
}

/// Removes the temporaries that writers killed mid-write left in `dir`. With `owned` (the
/// caller holds `dir`'s lock), every temporary but this process's own is stale; without it,
/// only those whose process has ended.
pub fn remove_stale_temps(dir: &Path, owned: bool) -> Vec<PathBuf> {
    let me = std::process::id();
    remove_temps(dir, |_, pid| pid != me && (owned || !process_alive(pid)))
}

/// Removes the temporaries of `path` itself (`.NAME.tmpPID`, `.NAME.oldPID` beside it) that
/// a writer killed mid-write left; a live writer's are kept.
pub fn remove_stale_temps_beside(path: &Path) -> Vec<PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    remove_temps(dir, |target, pid| target == name && !process_alive(pid))
}

/// A training run directory: `config.toml` with `metrics.jsonl` or `checkpoints/`.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join("config.toml").is_file()
        && (dir.join("metrics.jsonl").is_file() || dir.join("checkpoints").is_dir())
}

/// The absolute form of `path` (its existing part resolved through symlinks).
fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Canonicalize the longest existing ancestor, then re-append the rest.
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return abs,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

/// Refuses an output `path` that is a training run directory or lies inside one, unless that
/// run is `own` (the command's own run).
pub fn refuse_run_dir_output(path: &Path, own: Option<&Path>) -> Result<()> {
    let target = absolute(path);
    let own = own.map(absolute);
    for (depth, dir) in target.ancestors().enumerate() {
        if is_run_dir(dir) && own.as_deref() != Some(dir) {
            return Err(CoreError::OutputInRun {
                path: path.to_path_buf(),
                run: dir.to_path_buf(),
                relation: if depth == 0 {
                    "the training run"
                } else {
                    "inside the training run"
                },
            });
        }
    }
    Ok(())
}

/// A name beside `path` that nothing uses yet: `NAME.replaced-UNIXSECONDS[-N]`.
fn aside_name(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let mut candidate = path.with_file_name(format!("{name}.replaced-{secs}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_file_name(format!("{name}.replaced-{secs}-{n}"));
        n += 1;
    }
    candidate
}

/// What may be done with an existing output path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing there (or an empty directory): write it.
    Fresh,
    /// A previous output of the same command: replace it (atomically, as the writer does).
    Ours,
    /// With `force`, the old content was moved to this path; nothing was deleted.
    MovedAside(PathBuf),
}

/// Decides whether a command may write `path`: nothing there, an empty directory, or something
/// `is_ours` recognises as this command's own earlier output. Anything else is refused with
/// [`CoreError::OutputExists`], or with `force` moved aside (a rename, never a delete).
/// `writer` names the command in the message (`clo export`).
pub fn claim_output(
    path: &Path,
    writer: &'static str,
    force: bool,
    is_ours: impl Fn(&Path) -> bool,
) -> Result<Claim> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Claim::Fresh),
        Err(e) => return Err(CoreError::io("inspect", path, e)),
    };
    if meta.is_dir()
        && std::fs::read_dir(path)
            .map_err(|e| CoreError::io("list", path, e))?
            .next()
            .is_none()
    {
        return Ok(Claim::Fresh);
    }
    if is_ours(path) {
        return Ok(Claim::Ours);
    }
    if !force {
        return Err(CoreError::OutputExists {
            path: path.to_path_buf(),
            writer,
        });
    }
    let aside = aside_name(path);
    std::fs::rename(path, &aside).map_err(|e| CoreError::io("move aside", path, e))?;
    tracing::warn!(from = %path.display(), to = %aside.display(), "force: moved the old output aside");
    Ok(Claim::MovedAside(aside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let held = DirLock::acquire(&run).unwrap();
        let err = DirLock::acquire(&run).unwrap_err();
        assert!(
            matches!(&err, CoreError::Locked { pid, .. } if *pid == std::process::id().to_string()),
            "{err}"
        );
        drop(held);
        // A lock file with a dead owner's PID but no OS lock: taken over.
        std::fs::write(run.join(".lock"), "999999999").unwrap();
        let again = DirLock::acquire(&run).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn stale_temporaries_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".step-00000010.tmp999999999");
        std::fs::create_dir_all(dead.join("x")).unwrap();
        let dead_file = dir.path().join(".best.old999999998");
        std::fs::write(&dead_file, "x").unwrap();
        let mine = dir.path().join(format!(".exp.tmp{}", std::process::id()));
        std::fs::create_dir(&mine).unwrap();
        let plain = dir.path().join("step.tmp12");
        std::fs::write(&plain, "keep").unwrap();
        let removed = remove_stale_temps(dir.path(), false);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!dead.exists() && !dead_file.exists());
        assert!(mine.exists() && plain.exists());
    }

    #[test]
    fn outputs_are_claimed_only_when_fresh_or_ours_and_force_moves_aside() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x");
        assert_eq!(
            claim_output(&out, "clo export", false, |_| false).unwrap(),
            Claim::Fresh
        );
        std::fs::create_dir(&out).unwrap();
        assert_eq!(
            claim_output(&out, "clo export", false, |_| false).unwrap(),
            Claim::Fresh
        );
        std::fs::write(out.join("t.txt"), "thesis").unwrap();
        let err = claim_output(&out, "clo export", false, |_| false).unwrap_err();
        assert!(matches!(err, CoreError::OutputExists { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(out.join("t.txt")).unwrap(),
            "thesis"
        );
        assert_eq!(
            claim_output(&out, "clo export", false, |_| true).unwrap(),
            Claim::Ours
        );
        let Claim::MovedAside(aside) = claim_output(&out, "clo export", true, |_| false).unwrap()
        else {
            panic!("moved aside")
        };
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_to_string(aside.join("t.txt")).unwrap(),
            "thesis"
        );
    }

    #[test]
    fn run_directories_and_their_insides_are_refused_as_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        std::fs::write(run.join("config.toml"), "").unwrap();
        assert!(refuse_run_dir_output(&run, None).is_err());
        assert!(refuse_run_dir_output(&run.join("best/x"), None).is_err());
        assert!(refuse_run_dir_output(&run, Some(&run)).is_ok());
        assert!(refuse_run_dir_output(&dir.path().join("other"), None).is_ok());
    }
}
