//! `results.json` of `clo eval mc|gen|judge`: one type, written by the commands and read back
//! by the report and the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Accuracy;
use super::generated::GenStats;
use super::judge::WinRate;
use crate::error::{CoreError, Result};

/// The numbers of one language of a toy eval (`EvalResults::Toy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyStats {
    pub n: usize,
    /// Share of responses in the prompt's language.
    pub fidelity: Accuracy,
    /// Share of responses with the right content.
    pub accuracy: Accuracy,
    /// Share of responses right and in the prompt's language.
    pub correct_in_language: Accuracy,
    /// Accuracy per kind of question.
    pub per_kind: BTreeMap<String, Accuracy>,
    pub s_index_mean: Option<f64>,
}

/// The model an eval ran on: its directory (or GGUF file) and the digest of its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub dir: PathBuf,
    pub weights_sha256: String,
}

/// One eval's results, per language and over all, with the settings it ran with (`config`,
/// free-form: what a reader needs to reproduce it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum EvalResults {
    /// Multiple choice by log-likelihood (`clo eval mc`).
    Mc {
        model: ModelRef,
        config: Value,
        per_language: BTreeMap<String, Accuracy>,
        overall: Accuracy,
    },
    /// Generated answers: fidelity, code-switching, choice accuracy (`clo eval gen`).
    Gen {
        model: ModelRef,
        config: Value,
        per_language: BTreeMap<String, GenStats>,
        overall: GenStats,
    },
    /// The toy world's held-out questions answered by generation (`clo quickstart`): fidelity,
    /// answer accuracy and both together, per language and per kind of question.
    Toy {
        model: ModelRef,
        config: Value,
        per_language: BTreeMap<String, ToyStats>,
        overall: ToyStats,
    },
    /// Win rate of `a` over `b` by an LLM judge (`clo eval judge`).
    Judge {
        a: PathBuf,
        b: PathBuf,
        judge: String,
        config: Value,
        per_language: BTreeMap<String, WinRate>,
        overall: WinRate,
    },
}

impl EvalResults {
    /// The `task` of this result.
    pub fn task(&self) -> &'static str {
        match self {
            EvalResults::Mc { .. } => "mc",
            EvalResults::Gen { .. } => "gen",
            EvalResults::Judge { .. } => "judge",
            EvalResults::Toy { .. } => "toy",
        }
    }

    /// Reads a `results.json`. `Ok(None)`: the file is JSON but not an eval result (no `task`
    /// of mc, gen, judge or toy, such as the quickstart's table); a result of a known task that
    /// does not parse is an error naming the file.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let text = crate::error::read_to_string(path, "eval results")?;
        let bad = |e: serde_json::Error| {
            CoreError::json(
                path,
                &e,
                "results.json as `clo eval mc|gen|judge` writes it",
            )
        };
        let value: Value = serde_json::from_str(&text).map_err(bad)?;
        if !matches!(value["task"].as_str(), Some("mc" | "gen" | "judge" | "toy")) {
            return Ok(None);
        }
        serde_json::from_value(value).map(Some).map_err(bad)
    }

    /// Writes `results.json` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_json_atomically(path, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_read_back_and_other_json_is_no_result() {
        let dir = tempfile::tempdir().unwrap();
        let acc = Accuracy {
            n: 4,
            correct: 3,
            accuracy: 0.75,
            stderr: 0.25,
        };
        let results = EvalResults::Mc {
            model: ModelRef {
                dir: "m".into(),
                weights_sha256: "ab".into(),
            },
            config: serde_json::json!({"tasks": "t.jsonl"}),
            per_language: BTreeMap::from([("sw".to_string(), acc)]),
            overall: acc,
        };
        let path = dir.path().join("results.json");
        results.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["task"], "mc");
        assert_eq!(v["per_language"]["sw"]["accuracy"], 0.75);
        assert_eq!(EvalResults::read(&path).unwrap(), Some(results));

        std::fs::write(&path, r#"{"rows": [1, 2]}"#).unwrap();
        assert_eq!(EvalResults::read(&path).unwrap(), None);
        std::fs::write(&path, r#"{"task": "mc", "per_language": {}}"#).unwrap();
        let err = EvalResults::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("results.json") && err.contains("model"),
            "{err}"
        );
    }
}
