//! JSON Lines input shared by the readers of tasks, prompts, responses and data.

use std::path::Path;

use serde_json::Value;

use crate::error::{CoreError, Result};

/// The records of a JSONL file with their 1-based line numbers; blank lines are skipped. A line
/// that does not parse as `T`, or a file without records, is an [`CoreError::Input`] naming the
/// file, the line and `hint`.
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
    hint: &'static str,
) -> Result<Vec<(usize, T)>> {
    let text = crate::error::read_to_string(path, what)?;
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint,
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        out.push((i + 1, record));
    }
    if out.is_empty() {
        return Err(bad(1, format!("no records: the file holds no {what}")));
    }
    Ok(out)
}

/// A record's `id` as text (a number as written), or `line-N` when it has none.
pub(crate) fn record_id(v: &Value, line: usize) -> String {
    match v.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("line-{line}"),
    }
}
