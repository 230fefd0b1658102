//! `GET /api/models` and `GET /api/models/NAME`: the models the server can use; and
//! `GET /api/models/NAME/files[/FILE]`: their files, for the in-browser engine.

use std::path::PathBuf;

use axum::extract::{Path as UrlPath, Request, State};
use axum::response::{IntoResponse, Response};
use clo_core::api::{ModelFile, ModelInfo};
use clo_core::load::files::is_model_file;

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
        // One broken model is listed with its error and hides none of the others (a panic
        // while reading it, were one left, included).
        let summary = std::panic::catch_unwind(|| clo_core::Pretrained::summarize(&dir))
            .unwrap_or_else(|_| {
                Err(clo_core::CoreError::Invalid(
                    "reading this model's files failed unexpectedly".into(),
                ))
            });
        let (summary, error) = match summary {
            Ok(summary) => (Some(summary), None),
            Err(e) => (None, Some(s.hide_paths_in(&e.to_string()))),
        };
        out.push(ModelInfo {
            name,
            source: "dir".into(),
            model_type: summary.as_ref().map(|s| s.model_type.to_string()),
            num_parameters: summary.map(|s| s.num_parameters),
            error,
        });
    }
    for run in super::runs::finished_runs(s) {
        out.push(ModelInfo {
            name: format!("run:{run}"),
            source: "run".into(),
            model_type: None,
            num_parameters: None,
            error: None,
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

/// `GET /api/models/NAME/files`: the files the browser engine fetches, with their sizes.
pub async fn files(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Vec<ModelFile>> {
    let dir = s.model_dir(&name)?;
    if !dir.is_dir() {
        return Err(ApiError::bad(format!(
            "model {name:?} is a GGUF file; the in-browser engine loads Hugging Face directories (config.json, safetensors): export one with `clo export --merged`"
        )));
    }
    blocking(move || {
        let mut out: Vec<ModelFile> = std::fs::read_dir(&dir)
            .map_err(ApiError::internal)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let meta = e.metadata().ok()?;
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                (meta.is_file() && is_model_file(&name)).then_some(ModelFile {
                    name,
                    size: meta.len(),
                    modified,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
    .await
}

/// `GET /api/models/NAME/files/FILE`: one of those files, with `Content-Length`, HTTP range
/// requests and `Last-Modified` (tower-http's file service).
pub async fn file(
    State(s): State<Shared>,
    UrlPath((name, file)): UrlPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let dir = s.model_dir(&name)?;
    // The route's parameter is decoded once (`%2f` is a `/` by now): only a single plain path
    // component that names a model file is served, never a path.
    if !clo_core::load::files::is_plain_file_name(&file) {
        return Err(ApiError::bad(format!(
            "model {name:?}: {file:?} is not a file name; GET /api/models/{name}/files lists the model's files"
        )));
    }
    if !is_model_file(&file) || !dir.join(&file).is_file() {
        return Err(ApiError::not_found(format!(
            "model {name:?} has no file {file:?}; GET /api/models/{name}/files lists them"
        )));
    }
    let res = tower_http::services::ServeFile::new(dir.join(&file))
        .try_call(req)
        .await
        .map_err(ApiError::internal)?;
    Ok(res.into_response())
}
