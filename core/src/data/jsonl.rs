//! JSON Lines input shared by the readers of tasks, prompts, responses and data.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{CoreError, Result};

/// The longest line clo reads from an input file unless `CLO_MAX_LINE_BYTES` says otherwise:
/// far more than any model's context holds, far less than memory.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 << 20;

/// The line limit in force: `CLO_MAX_LINE_BYTES` (bytes) when set to a positive number, else
/// [`DEFAULT_MAX_LINE_BYTES`].
pub fn max_line_bytes() -> usize {
    std::env::var("CLO_MAX_LINE_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_MAX_LINE_BYTES)
}

/// The lines of a text file, read one at a time: a line longer than the limit is refused by
/// file:line as soon as the limit is passed (never read whole), and a line that is not UTF-8 is
/// refused by file:line.
pub struct Lines {
    reader: BufReader<std::fs::File>,
    path: PathBuf,
    line: usize,
    limit: usize,
    buf: Vec<u8>,
}

impl Lines {
    /// Opens `path` (`what` names it when missing) with the limit of [`max_line_bytes`].
    pub fn open(path: &Path, what: &'static str) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CoreError::MissingFile {
                    path: path.to_path_buf(),
                    what,
                }
            } else {
                CoreError::io("read", path, e)
            }
        })?;
        Ok(Self {
            reader: BufReader::new(file),
            path: path.to_path_buf(),
            line: 0,
            limit: max_line_bytes(),
            buf: Vec::new(),
        })
    }

    /// Sets the limit (bytes per line, without the newline).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// The next line (1-based number, text without the line break), or `None` at the end.
    pub fn next_line(&mut self) -> Option<Result<(usize, &str)>> {
        self.buf.clear();
        self.line += 1;
        let read = (&mut self.reader)
            .take(self.limit as u64 + 2)
            .read_until(b'\n', &mut self.buf);
        match read {
            Err(e) => return Some(Err(CoreError::io("read", &self.path, e))),
            Ok(0) => return None,
            Ok(_) => {}
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        if self.buf.len() > self.limit {
            return Some(Err(CoreError::Input {
                path: self.path.clone(),
                line: self.line,
                message: format!(
                    "the line is longer than {} bytes, the limit per line (CLO_MAX_LINE_BYTES); it was not read further",
                    self.limit
                ),
                hint: "fix the file, or raise CLO_MAX_LINE_BYTES if a line is meant to be this long",
            }));
        }
        Some(match std::str::from_utf8(&self.buf) {
            Ok(text) => Ok((self.line, text)),
            Err(e) => Err(CoreError::Input {
                path: self.path.clone(),
                line: self.line,
                message: format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1),
                hint: "save the file as UTF-8",
            }),
        })
    }
}

/// The records of a JSONL file with their 1-based line numbers; blank lines are skipped. A line
/// that does not parse as `T`, or a file without records, is an [`CoreError::Input`] naming the
/// file, the line and `hint`.
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
    hint: &'static str,
) -> Result<Vec<(usize, T)>> {
    let mut lines = Lines::open(path, what)?;
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint,
    };
    let mut out = Vec::new();
    while let Some(next) = lines.next_line() {
        let (n, line) = next?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| bad(n, e.to_string()))?;
        out.push((n, record));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_non_utf8_lines_are_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let mut bytes = b"{\"a\": 1}\r\n\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 100));
        bytes.extend(b"\n{\"b\": 2}\n");
        std::fs::write(&path, &bytes).unwrap();
        let mut lines = Lines::open(&path, "test data").unwrap().with_limit(50);
        assert_eq!(lines.next_line().unwrap().unwrap(), (1, "{\"a\": 1}"));
        assert_eq!(lines.next_line().unwrap().unwrap(), (2, ""));
        let err = lines.next_line().unwrap().unwrap_err().to_string();
        assert!(
            err.contains("x.jsonl:3") && err.contains("longer than 50 bytes"),
            "{err}"
        );

        // Exactly at the limit is fine, also as a last line without a newline.
        std::fs::write(&path, "abcde\nfghij").unwrap();
        let mut lines = Lines::open(&path, "test data").unwrap().with_limit(5);
        assert_eq!(lines.next_line().unwrap().unwrap(), (1, "abcde"));
        assert_eq!(lines.next_line().unwrap().unwrap(), (2, "fghij"));
        assert!(lines.next_line().is_none());

        std::fs::write(&path, b"{}\n{\"a\": \"\xff\"}\n").unwrap();
        let err = read_jsonl::<Value>(&path, "test data", "h")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.jsonl:2") && err.contains("UTF-8"), "{err}");
    }
}
