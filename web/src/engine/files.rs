//! A model's files in the browser: where they are (`clo serve`'s files route or any URL of a
//! model directory), which to fetch, and their bytes, kept in the browser's cache across
//! reloads.

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::js_err;
use crate::types::ModelFile;

/// Where a model's files are: `clo serve`'s files of model `source`, or the URL of a directory.
pub(super) fn base_url(source: &str) -> String {
    if source.starts_with("http://") || source.starts_with("https://") || source.starts_with('/') {
        source.trim_end_matches('/').to_string()
    } else {
        format!("/api/models/{source}/files")
    }
}

/// The browser cache that keeps downloaded model files across reloads (Cache API).
const CACHE: &str = "clo-models-v1";

/// The bytes of `url` (`None` on 404), from the browser's cache when it holds `key` (the URL
/// with the file's size and date from the server's listing), else downloaded and cached; with
/// no `key`, always downloaded and never cached (data files, which change in place).
pub(super) async fn fetch_bytes(url: &str, key: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    let window = web_sys::window().ok_or("no window")?;
    // The Cache API exists in secure contexts only (https, or http on localhost).
    let cache: Option<(web_sys::Cache, &str)> = match (window.caches(), key) {
        (Ok(caches), Some(key)) => JsFuture::from(caches.open(CACHE))
            .await
            .ok()
            .and_then(|c| c.dyn_into().ok())
            .map(|c| (c, key)),
        _ => None,
    };
    if let Some((cache, key)) = &cache {
        let hit = JsFuture::from(cache.match_with_str(key))
            .await
            .map_err(js_err)?;
        if let Ok(resp) = hit.dyn_into::<web_sys::Response>() {
            return Ok(Some(body_bytes(&resp, url).await?));
        }
    }
    let init = web_sys::RequestInit::new();
    let headers = web_sys::Headers::new().map_err(js_err)?;
    if let Some(t) = crate::api::token() {
        headers
            .set("Authorization", &format!("Bearer {t}"))
            .map_err(js_err)?;
    }
    init.set_headers(&headers);
    let request = web_sys::Request::new_with_str_and_init(url, &init).map_err(js_err)?;
    let resp: web_sys::Response = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(|e| format!("fetching {url}: {}", js_err(e)))?
        .dyn_into()
        .map_err(|_| format!("fetching {url}: not a response"))?;
    match resp.status() {
        200..=299 => {}
        404 => return Ok(None),
        status => return Err(format!("fetching {url}: HTTP {status}")),
    }
    if let Some((cache, key)) = &cache {
        let copy = resp.clone().map_err(js_err)?;
        // A full cache (quota) only costs the next reload a download.
        let _ = JsFuture::from(cache.put_with_str(key, &copy)).await;
    }
    Ok(Some(body_bytes(&resp, url).await?))
}

async fn body_bytes(resp: &web_sys::Response, url: &str) -> Result<Vec<u8>, String> {
    let buffer = JsFuture::from(resp.array_buffer().map_err(js_err)?)
        .await
        .map_err(|e| format!("reading {url}: {}", js_err(e)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// A file to fetch: its name, its size and version (when the server lists them), and whether
/// the model needs it.
pub(super) struct Wanted {
    pub(super) name: String,
    pub(super) size: Option<u64>,
    pub(super) version: Option<String>,
    pub(super) needed: bool,
}

/// The files to fetch: `clo serve` lists them; for another host, the known names are tried.
pub(super) async fn file_list(source: &str, base: &str) -> Result<Vec<Wanted>, String> {
    if base.starts_with("/api/models/") {
        let list: Vec<ModelFile> = crate::api::get_json(base).await?;
        if list.is_empty() {
            return Err(format!(
                "model {source:?} has no files the browser can load"
            ));
        }
        return Ok(list
            .into_iter()
            .map(|f| Wanted {
                version: Some(format!("{}-{}", f.size, f.modified)),
                name: f.name,
                size: Some(f.size),
                needed: true,
            })
            .collect());
    }
    Ok(clo_core::load::files::MODEL_FILES
        .iter()
        .map(|(n, needed)| Wanted {
            name: n.to_string(),
            size: None,
            version: None,
            needed: *needed,
        })
        .collect())
}
