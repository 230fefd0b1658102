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
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io("create", dir, e))?;
    }
    let tmp = temp_beside(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
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
