//! RFC 9457 `application/problem+json` bodies, the one error shape of every HTTP API.

use std::collections::BTreeMap;

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem details object (RFC 9457). `errors` carries per-field validation messages.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "about:blank")]
    pub kind: &'static str,
    /// The status' reason phrase.
    #[schema(example = "Bad Request")]
    pub title: String,
    #[schema(example = 400)]
    pub status: u16,
    /// What went wrong, for people.
    #[schema(example = "request validation failed")]
    pub detail: String,
    /// Per-field messages of a validation failure, keyed by JSON field name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, String>>,
    /// Extension members (RFC 9457 §3.2) a service documents for its own problems, e.g. the id
    /// of the appointment a booking conflicts with.
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(ignore)]
    pub extensions: BTreeMap<&'static str, serde_json::Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem whose title is the status' reason phrase.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: None,
            extensions: BTreeMap::new(),
            retry_after_secs: None,
        }
    }

    /// Adds the per-field `errors` object.
    pub fn with_errors(mut self, errors: BTreeMap<String, String>) -> Self {
        self.errors = Some(errors);
        self
    }

    /// Adds an extension member.
    pub fn with_extension(mut self, name: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(name, value.into());
        self
    }

    /// Adds a `Retry-After` header (seconds) to the response.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// `Retry-After` for a wait: whole seconds, rounded up, at least one.
    pub fn with_retry_after_duration(self, wait: std::time::Duration) -> Self {
        self.with_retry_after(retry_after_secs(wait))
    }
}

/// A wait as `Retry-After` seconds: rounded up, at least one.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_secs;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The answer to a failure inside a service: 503 with `Retry-After` when no database connection
/// could be had (nothing was done; [`crate::db::unreachable_problem`]), else 500 revealing nothing.
/// Logged either way, with the cause's chain.
pub fn internal(cause: &anyhow::Error) -> Problem {
    crate::db::unreachable_problem(cause).unwrap_or_else(|| {
        tracing::error!(error = ?cause, "request failed");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}
