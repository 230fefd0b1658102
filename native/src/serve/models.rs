//! `GET /api/models` and `GET /api/models/NAME`: the models the server can use.

use std::path::PathBuf;

use axum::extract::{Path as UrlPath, State};
use clo_core::api::ModelInfo;

use super::{ApiError, ApiResult, Shared, blocking};

pub async fn list(State(s): State<Shared>) -> ApiResult<Vec<ModelInfo>> {
    blocking(move || Ok(models_of(&s))).await
}

/// The models of `--model`, `WORKDIR/models/` and the finished runs (reads their headers).
fn models_of(s: &Shared) -> Vec<ModelInfo> {
    let mut out = Vec::new();
    let mut dirs: Vec<(String, PathBuf)> = s.models.clone().into_iter().collect();
    if let Ok(rd) = std::fs::read_dir(s.workdir.join("models")) {
        for e in rd.flatten() {
            let path = e.path();
            let (name, model) = if clo_core::gguf::is_gguf(&path) && path.is_file() {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                (stem.into_owned(), true)
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, path.join("config.json").is_file())
            };
            if model && !s.models.contains_key(&name) {
                dirs.push((name, path));
            }
        }
    }
    dirs.sort();
    for (name, dir) in dirs {
        let summary = clo_core::Pretrained::summarize(&dir).ok();
        out.push(ModelInfo {
            name,
            source: "dir".into(),
            model_type: summary.as_ref().map(|s| s.model_type.to_string()),
            num_parameters: summary.map(|s| s.num_parameters),
        });
    }
    for run in super::runs::finished_runs(s) {
        out.push(ModelInfo {
            name: format!("run:{run}"),
            source: "run".into(),
            model_type: None,
            num_parameters: None,
        });
    }
    out
}

pub async fn inspect(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<clo_core::Summary> {
    let dir = s.model_dir(&name)?;
    blocking(move || clo_core::Pretrained::summarize(&dir).map_err(ApiError::from)).await
}
