//! `GET /api/evals` and `GET /api/evals/report`: eval results under the work directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::extract::State;
use clo_core::api::{EvalInfo, EvalReport};

use super::{ApiResult, Shared, blocking};

pub async fn list(State(s): State<Shared>) -> ApiResult<Vec<EvalInfo>> {
    blocking(move || Ok(evals_of(&s))).await
}

/// Every eval result (`results.json` of `clo eval mc|gen|judge`) under `WORKDIR/runs`.
fn evals_of(s: &Shared) -> Vec<EvalInfo> {
    let mut out = Vec::new();
    let runs_dir = s.workdir.join("runs");
    for entry in walk(&runs_dir, 3) {
        if entry.file_name().is_some_and(|n| n == "results.json")
            && let Ok(Some(results)) = clo_core::eval::EvalResults::read(&entry)
            && let Ok(results) = serde_json::to_value(results)
        {
            out.push(EvalInfo {
                path: entry
                    .strip_prefix(&s.workdir)
                    .unwrap_or(&entry)
                    .display()
                    .to_string(),
                results,
            });
        }
    }
    out
}

/// `clo eval report` over every eval under `WORKDIR/runs` and `WORKDIR/evals`; its `tables`
/// have one row per run (the report's files pool runs of one method and size, as a study's do).
pub async fn report(State(s): State<Shared>) -> ApiResult<EvalReport> {
    let dirs: Vec<PathBuf> = ["runs", "evals"]
        .iter()
        .map(|d| s.workdir.join(d))
        .filter(|d| d.is_dir())
        .collect();
    blocking(move || {
        Ok(match clo_core::eval::report::collect(&dirs) {
            Ok(entries) => EvalReport {
                files: clo_core::eval::report::render(&entries),
                message: None,
                // One column per run: two runs of one method and size stay apart here.
                tables: clo_core::eval::report::tables_by(
                    &entries,
                    clo_core::eval::report::Rows::Runs,
                ),
            },
            Err(e) => EvalReport {
                files: BTreeMap::new(),
                message: Some(e.to_string()),
                tables: Vec::new(),
            },
        })
    })
    .await
}

fn walk(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() && depth > 0 {
                out.extend(walk(&p, depth - 1));
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}
