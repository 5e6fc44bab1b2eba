//! The one error type of appointment-service and its single mapping to RFC 9457 responses.

use std::collections::BTreeMap;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use common::problem::Problem;
use uuid::Uuid;

/// The exclusion constraint that keeps a clinician from being double-booked.
pub const NO_DOUBLE_BOOKING: &str = "appointments_no_double_booking";
/// The trigger's name for "a slot must lie in the future".
const FUTURE_SLOT: &str = "appointments_future_slot";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Field-level validation failures, keyed by JSON field name.
    #[error("request validation failed")]
    Validation(BTreeMap<String, String>),
    /// Malformed request: a malformed id, header or query.
    #[error("{0}")]
    BadRequest(String),
    #[error("appointment not found")]
    NotFound,
    /// The clinician already has an appointment overlapping the slot (its id, when it is still
    /// there to be named).
    #[error("the clinician already has an appointment in this slot")]
    SlotTaken(Option<Uuid>),
    /// A check-in before the appointment's check-in opens (minutes before its start).
    #[error("a patient can be checked in from {0} minutes before the appointment starts")]
    CheckInNotOpen(i64),
    /// A no-show can only be recorded once the appointment has started.
    #[error("an appointment can be marked as no-show only once it has started")]
    NotStarted,
    /// The appointment has ended while BOOKED: what happened is a no-show (or a new booking),
    /// not a cancellation, a check-in or a move of the past.
    #[error("cannot {0} an appointment that has ended; mark it as no-show")]
    Ended(&'static str),
    /// The appointment's status does not allow the command.
    #[error("cannot {verb} an appointment that is {status}")]
    InvalidTransition { verb: &'static str, status: String },
    /// `If-Match` names a version that is no longer current.
    #[error("the appointment has changed since the version If-Match names")]
    StaleVersion { current: i64 },
    /// The patient is unknown to the replica, or deleted.
    #[error("{0}")]
    UnknownPatient(&'static str),
    /// The projection did not reach the position the client asked to wait for.
    #[error("the schedule has not caught up with that change yet; retry shortly")]
    NotCaughtUp,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The one place where database errors become API errors. A double booking is a 409 whose
/// conflicting appointment the caller looks up ([`crate::repo::conflicting`]), so it is mapped
/// there; a past slot the trigger refused is a validation error.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &err {
            if db.constraint() == Some(FUTURE_SLOT) {
                return Error::Validation(BTreeMap::from([("startsAt".to_owned(), "must be in the future".to_owned())]));
            }
        }
        Error::Internal(anyhow::Error::new(err).context("database operation failed"))
    }
}

/// Whether `err` is the double-booking exclusion violation.
pub fn is_double_booking(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.constraint() == Some(NO_DOUBLE_BOOKING))
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = match &self {
            Error::Validation(errors) => Problem::new(StatusCode::BAD_REQUEST, self.to_string()).with_errors(errors.clone()),
            Error::BadRequest(_) => Problem::new(StatusCode::BAD_REQUEST, self.to_string()),
            Error::NotFound => Problem::new(StatusCode::NOT_FOUND, self.to_string()),
            Error::SlotTaken(other) => {
                let problem = Problem::new(StatusCode::CONFLICT, self.to_string());
                match other {
                    Some(id) => problem.with_extension("conflictingAppointmentId", id.to_string()),
                    None => problem,
                }
            }
            Error::InvalidTransition { .. } | Error::NotStarted | Error::Ended(_) | Error::CheckInNotOpen(_) => {
                Problem::new(StatusCode::CONFLICT, self.to_string())
            }
            Error::StaleVersion { current } => common::conditional::stale_problem("appointment", *current),
            Error::UnknownPatient(_) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, self.to_string()),
            Error::NotCaughtUp => Problem::new(StatusCode::SERVICE_UNAVAILABLE, self.to_string()).with_retry_after(1),
            Error::Internal(cause) => common::problem::internal(cause),
        };
        problem.into_response()
    }
}
