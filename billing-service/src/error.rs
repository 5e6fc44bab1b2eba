//! The one error type of billing-service and its single mapping to gRPC status codes.

/// Everything a billing operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message says which field and why (never echoes values).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no billing account exists for this patient")]
    NotFound,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(msg) => tonic::Status::invalid_argument(msg),
            Error::NotFound => tonic::Status::not_found(err.to_string()),
            // Every billing call may be repeated (an account is created once per patient), so a
            // database that cannot be reached or went away mid-call is UNAVAILABLE: the caller
            // retries it, counts it against billing, and answers its own client 503.
            Error::Internal(cause) if common::db::database_error(&cause).is_some_and(common::db::unavailable) => {
                tracing::warn!(error = %format!("{cause:#}"), "billing's database is unavailable");
                tonic::Status::unavailable("billing's database is unavailable")
            }
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "billing request failed");
                tonic::Status::internal("internal error")
            }
        }
    }
}
