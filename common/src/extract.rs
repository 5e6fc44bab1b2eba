//! What every REST service reads off a request the same way: body and query extractors whose
//! rejections are RFC 9457 problem responses instead of axum's plain-text ones (415 for a body
//! not declared JSON, 413 for one over the limit, 400 for malformed JSON, a wrong shape or a
//! malformed query string), canonical UUIDs, and the path prefix a reverse proxy stripped.

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        FromRequest, FromRequestParts, Query, Request,
    },
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Why a request's body or query string was refused before the handler ran.
#[derive(Debug, thiserror::Error)]
pub enum BadInput {
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body is too large")]
    TooLarge,
    #[error("{0}")]
    Malformed(String),
}

impl IntoResponse for BadInput {
    fn into_response(self) -> Response {
        let status = match self {
            BadInput::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BadInput::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BadInput::Malformed(_) => StatusCode::BAD_REQUEST,
        };
        Problem::new(status, self.to_string()).into_response()
    }
}

/// `Json<T>` with problem responses.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = BadInput;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(BadInput::UnsupportedMediaType),
            Err(JsonRejection::JsonSyntaxError(_)) => Err(BadInput::Malformed("request body is not valid JSON".into())),
            Err(JsonRejection::JsonDataError(e)) => Err(BadInput::Malformed(format!(
                "request body does not match the schema: {}",
                e.body_text().trim_start_matches("Failed to deserialize the JSON body into the target type: ")
            ))),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(BadInput::TooLarge),
            Err(_) => Err(BadInput::Malformed("request body could not be read".into())),
        }
    }
}

/// `Query<T>` with a 400 problem response.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = BadInput;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| Self(q)).map_err(|e: QueryRejection| {
            BadInput::Malformed(format!(
                "invalid query string: {}",
                e.body_text().trim_start_matches("Failed to deserialize query string: ")
            ))
        })
    }
}

/// A UUID in its canonical hyphenated form only (as the APIs document it), not the other forms
/// `uuid` also parses (simple, braced, URN).
pub fn canonical_uuid(raw: &str) -> Option<uuid::Uuid> {
    (raw.len() == 36).then(|| uuid::Uuid::try_parse(raw).ok()).flatten()
}

/// The path prefix a reverse proxy stripped (the gateway strips `/api`), so `Location` and
/// `Link` point where the client can follow them. Only a plain absolute path is accepted: every
/// segment non-empty and not `.`/`..`, so `//host` (a network-path reference to another site)
/// can never become a `Location`.
pub fn forwarded_prefix(headers: &axum::http::HeaderMap) -> &str {
    let plain = |p: &str| {
        p.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
        })
    };
    headers
        .get("x-forwarded-prefix")
        .and_then(|v| v.to_str().ok())
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| plain(p))
        .unwrap_or("")
}
