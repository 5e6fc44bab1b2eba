//! The one error type of patient-service and its single mapping to RFC 9457 responses.

use std::collections::BTreeMap;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use common::problem::Problem;

/// Seconds a client should wait before retrying while billing is unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Name of the unique index that makes emails unique (case-insensitively).
const EMAIL_UNIQUE_INDEX: &str = "patients_email_key";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Field-level validation failures, keyed by JSON field name.
    #[error("request validation failed")]
    Validation(BTreeMap<String, String>),
    /// Malformed request: not JSON, wrong JSON shape, malformed id or query.
    #[error("{0}")]
    BadRequest(String),
    #[error("patient not found")]
    NotFound,
    #[error("{0}")]
    NotFoundDetail(&'static str),
    #[error("email address is already used by another patient")]
    EmailTaken,
    /// The `Idempotency-Key` was used before with a different request body.
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    /// The first request with this `Idempotency-Key` is still being processed.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyKeyInUse,
    /// The patient this `Idempotency-Key` created has been deleted since.
    #[error("the patient created with this Idempotency-Key has been deleted since; use a new key to create a patient")]
    IdempotencyKeyPatientDeleted,
    /// `If-Match` names only versions that are no longer current.
    #[error("the patient has changed since the version If-Match names")]
    StaleVersion { current: i64 },
    /// Billing did not answer in time or at all: nothing was persisted, retrying is safe.
    #[error("billing service is unavailable; nothing was saved, retry later")]
    BillingUnavailable,
    /// Billing is known to be down (the circuit is open): refused at once, nothing was persisted.
    #[error("billing service is unavailable; nothing was saved, retry later")]
    BillingCircuitOpen(std::time::Duration),
    /// Billing answered with an error we did not expect.
    #[error("billing service failed")]
    BillingFailed(#[source] tonic::Status),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one place where database errors become API errors: the email index's unique violation is
/// a 409, no connection at all a 503 (see the response mapping), everything else a 500.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        if common::db::unique_violation_on(&err) == Some(EMAIL_UNIQUE_INDEX) {
            return Error::EmailTaken;
        }
        Error::Internal(anyhow::Error::new(err).context("database operation failed"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = match &self {
            Error::Validation(errors) => Problem::new(StatusCode::BAD_REQUEST, self.to_string()).with_errors(errors.clone()),
            Error::BadRequest(_) => Problem::new(StatusCode::BAD_REQUEST, self.to_string()),
            Error::NotFound | Error::NotFoundDetail(_) => Problem::new(StatusCode::NOT_FOUND, self.to_string()),
            Error::EmailTaken | Error::IdempotencyKeyInUse | Error::IdempotencyKeyPatientDeleted => {
                Problem::new(StatusCode::CONFLICT, self.to_string())
            }
            Error::IdempotencyKeyReused => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, self.to_string()),
            Error::StaleVersion { current } => common::conditional::stale_problem("patient", *current),
            Error::BillingUnavailable => {
                tracing::warn!("billing unavailable; request rolled back");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, self.to_string()).with_retry_after(RETRY_AFTER_SECS)
            }
            // When the breaker lets the next probe through, at least a second away.
            Error::BillingCircuitOpen(retry_after) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, self.to_string()).with_retry_after_duration(*retry_after)
            }
            Error::BillingFailed(status) => {
                tracing::error!(code = ?status.code(), "billing call failed");
                Problem::new(StatusCode::BAD_GATEWAY, self.to_string())
            }
            Error::Internal(cause) => common::problem::internal(cause),
        };
        problem.into_response()
    }
}
