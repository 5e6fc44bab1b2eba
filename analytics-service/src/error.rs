//! The one error type of analytics-service's HTTP API.

use axum::response::{IntoResponse, Response};

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
        common::problem::internal(&cause).into_response()
    }
}
