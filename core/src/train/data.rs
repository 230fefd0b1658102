//! Cross-lingual quadruples `(x_en, y_en, x_tgt, y_tgt)`, one JSON object per line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CoreError, Result};

/// One record of a quadruple file. Fields beyond the six are kept as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quadruple {
    pub id: String,
    /// Target language code (for example `sw`).
    pub lang: String,
    pub x_en: String,
    pub y_en: String,
    pub x_tgt: String,
    pub y_tgt: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

const HINT: &str = "each line is {\"id\", \"lang\", \"x_en\", \"y_en\", \"x_tgt\", \"y_tgt\"} with non-empty strings (`clo prepare` writes them)";

const FIELDS: [&str; 6] = ["id", "lang", "x_en", "y_en", "x_tgt", "y_tgt"];

/// Reads a quadruple file. A missing or empty field stops with the file, the line and the field.
pub fn read_quadruples(path: &Path) -> Result<Vec<Quadruple>> {
    let mut out = Vec::new();
    for (line, value) in crate::data::jsonl::read_jsonl::<Value>(path, "quadruple data", HINT)? {
        out.push(quadruple_of(path, line, value)?);
    }
    Ok(out)
}

/// Quadruples from JSONL text (the browser's download of a file; `source` names it in
/// messages), checked as [`read_quadruples`] checks a file.
pub fn quadruples_from_text(source: &Path, text: &str) -> Result<Vec<Quadruple>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| CoreError::Input {
            path: source.to_path_buf(),
            line: i + 1,
            message: format!("not JSON: {e}"),
            hint: HINT,
        })?;
        out.push(quadruple_of(source, i + 1, value)?);
    }
    Ok(out)
}

/// One record, its fields checked.
pub fn quadruple_of(path: &Path, line: usize, value: Value) -> Result<Quadruple> {
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint: HINT,
    };
    {
        let Some(obj) = value.as_object() else {
            return Err(bad(line, "not a JSON object".into()));
        };
        for field in FIELDS {
            match obj.get(field) {
                None => return Err(bad(line, format!("missing field `{field}`"))),
                Some(Value::String(s)) if s.trim().is_empty() => {
                    return Err(bad(line, format!("field `{field}` is empty")));
                }
                Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(bad(
                        line,
                        format!("field `{field}` must be a string, got {other}"),
                    ));
                }
            }
        }
        serde_json::from_value(value).map_err(|e| bad(line, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<Quadruple>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quads.jsonl");
        std::fs::write(&path, text).unwrap();
        read_quadruples(&path)
    }

    const GOOD: &str = r#"{"id": "1", "lang": "sw", "x_en": "Hi", "y_en": "Hello", "x_tgt": "Jambo", "y_tgt": "Habari", "source_id": 7}"#;

    #[test]
    fn extra_fields_are_kept() {
        let q = read(&format!("{GOOD}\n\n")).unwrap();
        assert_eq!(q[0].extra.get("source_id"), Some(&Value::from(7)));
    }

    #[test]
    fn missing_and_empty_fields_name_the_line() {
        let err = read(&format!(
            "{GOOD}\n{}\n",
            GOOD.replace(r#""y_tgt": "Habari", "#, "")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("quads.jsonl:2: missing field `y_tgt`"),
            "{err}"
        );
        let err = read(&GOOD.replace("\"Jambo\"", "\" \""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("quads.jsonl:1: field `x_tgt` is empty"),
            "{err}"
        );
    }
}
