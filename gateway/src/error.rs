//! The one error type of the gateway and its mapping to responses: RFC 6750 challenges for
//! authentication and authorisation, RFC 9457 problem bodies for everything.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use common::problem::Problem;
use verifier::AuthError;

/// The `realm` of our `WWW-Authenticate` challenges.
const REALM: &str = "patient-platform";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No acceptable bearer credentials (RFC 6750 challenge; the reason names the check only).
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// Authenticated, but a role is missing.
    #[error("the access token lacks the role(s) {0}")]
    InsufficientScope(String),
    #[error("no route for this path")]
    NotFound,
    #[error("method not allowed for this path")]
    MethodNotAllowed,
    #[error("the backend service is unavailable")]
    UpstreamUnavailable,
    #[error("the backend service did not answer in time")]
    UpstreamTimeout,
    #[error("the backend service failed")]
    UpstreamFailed(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, challenge) = match &self {
            Error::Unauthenticated(AuthError::MissingToken) => (StatusCode::UNAUTHORIZED, Some(format!("Bearer realm=\"{REALM}\""))),
            Error::Unauthenticated(AuthError::InvalidToken(reason)) => (
                StatusCode::UNAUTHORIZED,
                Some(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{reason}\"")),
            ),
            Error::InsufficientScope(roles) => (
                StatusCode::FORBIDDEN,
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"missing role\", scope=\"{roles}\""
                )),
            ),
            Error::NotFound => (StatusCode::NOT_FOUND, None),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, None),
            Error::UpstreamUnavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            Error::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, None),
            Error::UpstreamFailed(cause) => {
                tracing::error!(error = ?cause, "upstream call failed");
                (StatusCode::BAD_GATEWAY, None)
            }
        };
        let mut problem = Problem::new(status, self.to_string());
        if matches!(self, Error::UpstreamUnavailable) {
            problem = problem.with_retry_after(5);
        }
        let mut response = problem.into_response();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
