//! The one error type of the gateway and its mapping to responses: RFC 6750 challenges for
//! authentication and authorisation (shared with the services, `verifier::web`), RFC 9457
//! problem bodies for everything.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use common::problem::Problem;
use verifier::{web::Denied, AuthError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No route, no acceptable token, or a missing role: decided before any backend is called.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The caller's bucket is empty: 429 with `Retry-After` and the quota headers.
    #[error("too many requests from this client; retry later")]
    RateLimited(crate::limit::Decision),
    #[error("the backend service is unavailable")]
    UpstreamUnavailable,
    #[error("the backend service did not answer in time")]
    UpstreamTimeout,
    #[error("the backend service failed")]
    UpstreamFailed(#[source] anyhow::Error),
}

impl From<AuthError> for Error {
    fn from(err: AuthError) -> Self {
        Error::Denied(err.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Denied(denied) => return denied.clone().into_response(),
            Error::RateLimited(decision) => {
                let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, self.to_string());
                let mut response = problem.with_retry_after(decision.retry_after.as_secs()).into_response();
                decision.apply(response.headers_mut());
                return response;
            }
            Error::UpstreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::UpstreamFailed(cause) => {
                tracing::error!(error = ?cause, "upstream call failed");
                StatusCode::BAD_GATEWAY
            }
        };
        let mut problem = Problem::new(status, self.to_string());
        if matches!(self, Error::UpstreamUnavailable) {
            problem = problem.with_retry_after(5);
        }
        problem.into_response()
    }
}
