//! The one error type of analytics-service's HTTP API.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use common::problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::Internal(anyhow::Error::new(err).context("database operation failed"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let Error::Internal(cause) = self;
        common::db::unreachable_problem(&cause)
            .unwrap_or_else(|| {
                tracing::error!(error = ?cause, "request failed");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            })
            .into_response()
    }
}
