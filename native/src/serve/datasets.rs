//! `GET /api/datasets` and `GET /api/datasets/NAME`: quadruple files and pages of them, each
//! text with the language it was identified as; `PUT /api/datasets/NAME`: an upload.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use clo_core::api::{DatasetInfo, DatasetPage, QuadView};
use serde::Deserialize;

use super::langid::langid_for;
use super::{ApiError, ApiResult, QueryParams, Shared, blocking};

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

pub async fn list(State(s): State<Shared>) -> ApiResult<Vec<DatasetInfo>> {
    blocking(move || datasets_of(&s)).await
}

/// The quadruple files of `WORKDIR/datasets/` (counts their lines).
fn datasets_of(s: &Shared) -> Result<Vec<DatasetInfo>, ApiError> {
    let mut out = Vec::new();
    let dir = s.workdir.join("datasets");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(ApiError::internal)?
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    for p in paths {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // Quadruple files only, not prepare's side files.
        let Some(stem) = name.strip_suffix(".jsonl") else {
            continue;
        };
        if stem.contains(".") {
            continue;
        }
        let summary = std::fs::read_to_string(dir.join(format!("{stem}.summary.json")))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        out.push(DatasetInfo {
            name: stem.into(),
            records: count_lines(&p),
            bytes: p.metadata().map(|m| m.len()).unwrap_or(0),
            summary,
        });
    }
    Ok(out)
}

/// The largest dataset upload; larger files are copied into `WORKDIR/datasets/`.
pub const UPLOAD_LIMIT: usize = 256 << 20;

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// Replace a dataset of that name.
    #[serde(default)]
    replace: bool,
}

/// `PUT /api/datasets/NAME[?replace=true]`: a quadruple JSONL file as the body
/// (`Content-Type: application/x-ndjson`), checked as `clo train` reads it (each line's fields
/// named on error) before it becomes `WORKDIR/datasets/NAME.jsonl`; an existing dataset is
/// replaced only with `replace`. Nothing is kept of a refused upload.
pub async fn upload(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    QueryParams(q): QueryParams<UploadQuery>,
    body: axum::body::Body,
) -> ApiResult<DatasetInfo> {
    super::check_name("dataset", &name)?;
    let bytes = axum::body::to_bytes(body, UPLOAD_LIMIT).await.map_err(|_| {
        ApiError(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a dataset upload takes at most {} MiB; copy larger files into WORKDIR/datasets/",
                UPLOAD_LIMIT >> 20
            ),
        )
    })?;
    blocking(move || {
        let dir = s.workdir.join("datasets");
        let path = dir.join(format!("{name}.jsonl"));
        if path.exists() && !q.replace {
            return Err(ApiError(
                axum::http::StatusCode::CONFLICT,
                format!("a dataset {name:?} exists; upload with ?replace=true to replace it, or choose another name"),
            ));
        }
        let tmp = dir.join(format!(".{name}.upload-{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(ApiError::internal)?;
        let checked = clo_core::train::data::read_quadruples(&tmp);
        let refuse = |message: String| {
            let _ = std::fs::remove_file(&tmp);
            // The temporary file's path is the server's own: name the upload instead.
            Err(ApiError::bad(
                message.replace(&tmp.display().to_string(), &format!("{name}.jsonl")),
            ))
        };
        let records = match checked {
            Err(e) => return refuse(e.to_string()),
            Ok(quads) if quads.is_empty() => {
                return refuse(format!("{name}.jsonl holds no quadruples: one JSON object per line with x_en, y_en, x_tgt and y_tgt"));
            }
            Ok(quads) => quads.len(),
        };
        std::fs::rename(&tmp, &path).map_err(ApiError::internal)?;
        tracing::info!(dataset = %name, bytes = bytes.len(), "dataset uploaded");
        Ok(DatasetInfo {
            name,
            records,
            bytes: bytes.len() as u64,
            summary: None,
        })
    })
    .await
}

/// `GET /api/datasets/NAME/file`: the quadruple JSONL itself, with `Content-Length` and range
/// requests (what the browser's fine-tuning reads).
pub async fn file(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let path = s.dataset_path(&name)?;
    let res = tower_http::services::ServeFile::new(path)
        .try_call(req)
        .await
        .map_err(ApiError::internal)?;
    Ok(res.into_response())
}

#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    20
}

pub async fn page(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<DatasetPage> {
    let path = s.dataset_path(&name)?;
    if q.limit == 0 || q.limit > 500 {
        return Err(ApiError::bad("limit must be 1..=500"));
    }
    blocking(move || page_of(&s, name, &path, &q)).await
}

/// One page of a dataset, each side with its detected language (reads the file, builds the
/// language identifier on first use).
fn page_of(s: &Shared, name: String, path: &Path, q: &PageQuery) -> Result<DatasetPage, ApiError> {
    let quads = clo_core::train::data::read_quadruples(path).map_err(ApiError::from)?;
    let langs: Vec<String> = {
        let mut l: Vec<String> = quads.iter().map(|q| q.lang.clone()).collect();
        l.push("en".into());
        l.sort();
        l.dedup();
        l
    };
    let langid = s
        .langids
        .lock()
        .expect("langid lock")
        .entry(langs.clone())
        .or_insert_with(|| langid_for(&langs))
        .clone();
    let records = quads
        .iter()
        .enumerate()
        .skip(q.offset)
        .take(q.limit)
        .map(|(i, r)| QuadView {
            line: i + 1,
            id: r.id.clone(),
            lang: r.lang.clone(),
            detected: [&r.x_en, &r.y_en, &r.x_tgt, &r.y_tgt]
                .map(|t| langid.as_ref().and_then(|l| l.detect(t))),
            x_en: r.x_en.clone(),
            y_en: r.y_en.clone(),
            x_tgt: r.x_tgt.clone(),
            y_tgt: r.y_tgt.clone(),
        })
        .collect();
    Ok(DatasetPage {
        name,
        offset: q.offset,
        total: quads.len(),
        records,
    })
}
