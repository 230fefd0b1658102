//! `POST /api/langid`: the language of a text.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use clo_core::api::{LangIdRequest, LangIdResponse};
use clo_core::eval::langid::LanguageIdentifier;

use super::{ApiError, ApiResult, BADGE_LANGS, JsonBody, Shared};

/// The language of a text: the toy world's lexicons when they say a toy language (`vel`, `toy`,
/// `zir`), else lingua over clo's languages.
pub async fn detect(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<LangIdRequest>,
) -> ApiResult<LangIdResponse> {
    use clo_core::eval::langid::LanguageIdentifier as _;
    let toy = clo_core::toy::ToyLangId.detect(&req.text);
    let is_toy = |l: &str| {
        clo_core::toy::world::Lang::TARGETS
            .iter()
            .any(|t| t.code() == l)
    };
    let lang = if toy.as_deref().is_some_and(is_toy) {
        toy
    } else {
        let langs: Vec<String> = BADGE_LANGS.iter().map(|l| l.to_string()).collect();
        tokio::task::spawn_blocking(move || s.langid(&langs).and_then(|l| l.detect(&req.text)))
            .await
            .map_err(ApiError::internal)?
    };
    Ok(Json(LangIdResponse { lang }))
}

/// The language identifier for a dataset's languages: the toy world's lexicons, lingua for the
/// languages it knows, none otherwise.
pub(super) fn langid_for(langs: &[String]) -> Option<Arc<dyn LanguageIdentifier>> {
    let toy = |l: &str| {
        clo_core::toy::world::Lang::TARGETS
            .iter()
            .any(|t| t.code() == l)
    };
    if langs.iter().any(|l| toy(l)) {
        return Some(Arc::new(clo_core::toy::ToyLangId));
    }
    clo_core::eval::langid::Lingua::new(langs)
        .ok()
        .map(|l| Arc::new(l) as Arc<dyn LanguageIdentifier>)
}
