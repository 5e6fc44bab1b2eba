//! Queries: one appointment from the write side (with its `ETag`, for commands), and the read
//! side's schedule views, each reporting how fresh the projection is and waiting, when asked,
//! for a command's consistency token.

use std::collections::BTreeMap;

use anyhow::Context;
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use chrono::{Datelike, Duration, NaiveDate, Utc};
use common::{extract::AppQuery, problem::Problem, zone::Zone};
use serde::Deserialize;
use uuid::Uuid;

use super::{appointment_id, etag, wait_for, AppState, PROJECTION_LAST_EVENT_AT, PROJECTION_POSITION, TOTAL_COUNT};
use crate::{
    domain::Appointment,
    projection::{self, Page},
    repo, Error, Result,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/appointments/schedule", get(schedule))
        .route("/appointments/upcoming", get(upcoming))
        .route("/appointments/{id}", get(read))
}

pub const DEFAULT_SIZE: i64 = 50;
pub const MAX_SIZE: i64 = 200;

/// One appointment as the write side holds it now.
#[utoipa::path(get, path = "/appointments/{id}", tag = "appointments", params(("id" = Uuid, Path, description = "Appointment id")),
    responses(
        (status = 200, description = "The appointment (`ETag`: its version)", body = Appointment),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such appointment", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn read(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let appointment = repo::get(&state.db, appointment_id(&id)?).await?.ok_or(Error::NotFound)?;
    let version = appointment.version;
    let mut response = Json(appointment).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    Ok(response)
}

/// `GET /appointments/schedule`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ScheduleQuery {
    /// The clinician (Keycloak user id).
    pub clinician_id: Option<String>,
    /// The first day, `YYYY-MM-DD`, in `timeZone` (default: today there).
    pub date: Option<String>,
    /// `day` (default) or `week` (7 days from `date`).
    pub view: Option<String>,
    /// Whose days: an IANA time zone name, e.g. `Europe/Berlin` (default: the service's
    /// `SCHEDULE_TIME_ZONE`, UTC unless set). A day runs from its local midnight to the next, 23
    /// or 25 hours when the clocks change.
    pub time_zone: Option<String>,
    /// 0-based page number.
    #[param(minimum = 0)]
    pub page: Option<i64>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub size: Option<i64>,
}

/// `GET /appointments/upcoming`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct UpcomingQuery {
    /// The patient.
    pub patient_id: Option<String>,
    #[param(minimum = 0)]
    pub page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    pub size: Option<i64>,
}

fn page(page: Option<i64>, size: Option<i64>, errors: &mut BTreeMap<String, String>) -> (i64, i64) {
    let (page, size) = (page.unwrap_or(0), size.unwrap_or(DEFAULT_SIZE));
    if page < 0 {
        errors.insert("page".into(), "must be 0 or greater".into());
    }
    if !(1..=MAX_SIZE).contains(&size) {
        errors.insert("size".into(), format!("must be between 1 and {MAX_SIZE}"));
    }
    (page, size)
}

fn required_id(field: &str, value: Option<&str>, errors: &mut BTreeMap<String, String>) -> Option<Uuid> {
    let parsed = value.and_then(common::extract::canonical_uuid);
    if parsed.is_none() {
        errors.insert(field.into(), "is required: a UUID like 123e4567-e89b-12d3-a456-426614174000".into());
    }
    parsed
}

/// Waits for the client's token (if any), then answers `page` with the projection's freshness.
async fn answer(state: &AppState, headers: &HeaderMap, load: impl AsyncFnOnce() -> sqlx::Result<Page>) -> Result<Response> {
    if let Some(token) = wait_for(headers)? {
        // A change that was never made is never projected: said at once, not after the wait
        // (which would let made-up tokens keep the database busy for nothing).
        let made = repo::get(&state.db, token.appointment_id).await?.is_some_and(|a| a.version >= token.version);
        if !made {
            return Err(Error::BadRequest(format!("X-Wait-For names a change that was not made: {token}")));
        }
        if !projection::wait_for(&state.db, token, state.wait_max).await? {
            return Err(Error::NotCaughtUp);
        }
    }
    let position = projection::position(&state.db).await.context("failed to read the projection's position")?;
    let Page { entries, total } = load().await?;
    let mut response = Json(entries).into_response();
    let h = response.headers_mut();
    h.insert(TOTAL_COUNT.clone(), HeaderValue::from(total));
    h.insert(PROJECTION_POSITION.clone(), HeaderValue::from(position.applied));
    if let Some(at) = position.last_event_at {
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        h.insert(PROJECTION_LAST_EVENT_AT.clone(), HeaderValue::from_str(&at).expect("a time is a header value"));
    }
    Ok(response)
}

/// A clinician's day or week, every status, by start (read side).
#[utoipa::path(get, path = "/appointments/schedule", tag = "appointments", params(ScheduleQuery,
        ("X-Wait-For" = Option<String>, Header, description = "A command's `X-Consistency-Token`: answer once the schedule shows that change")),
    responses(
        (status = 200, description = "The page (`X-Total-Count`, `X-Projection-Position`, `X-Projection-Last-Event-At`)", body = [Appointment]),
        (status = 400, description = "Invalid query, or `X-Wait-For` malformed or naming a change that was not made", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The schedule did not reach `X-Wait-For` in time", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn schedule(State(state): State<AppState>, headers: HeaderMap, AppQuery(q): AppQuery<ScheduleQuery>) -> Result<Response> {
    let mut errors = BTreeMap::new();
    let clinician_id = required_id("clinicianId", q.clinician_id.as_deref(), &mut errors);
    let zone = match q.time_zone.as_deref() {
        None => state.zone,
        Some(raw) => raw.parse::<Zone>().unwrap_or_else(|err| {
            errors.insert("timeZone".into(), err.to_string());
            state.zone
        }),
    };
    let date = match q.date.as_deref() {
        None => Some(zone.today(Utc::now())),
        // Years 1-9999, as RFC 3339 allows: chrono also reads signed years of any length, which
        // would overflow a week's end or fall outside PostgreSQL's range.
        Some(raw) => NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok().filter(|d| (1..=9999).contains(&d.year())).or_else(|| {
            errors.insert("date".into(), "must be a date like 2027-03-01".into());
            None
        }),
    };
    let days = match q.view.as_deref() {
        None | Some("day") => 1,
        Some("week") => 7,
        Some(_) => {
            errors.insert("view".into(), "must be day or week".into());
            1
        }
    };
    let paging = page(q.page, q.size, &mut errors);
    let (Some(clinician_id), Some(date)) = (clinician_id, date) else { return Err(Error::Validation(errors)) };
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let (from, to) = (zone.start_of(date), zone.start_of(date + Duration::days(days)));
    answer(&state, &headers, async || projection::clinician_schedule(&state.db, clinician_id, from, to, paging).await).await
}

/// A patient's appointments that have not ended and are still on, by start (read side).
#[utoipa::path(get, path = "/appointments/upcoming", tag = "appointments", params(UpcomingQuery,
        ("X-Wait-For" = Option<String>, Header, description = "A command's `X-Consistency-Token`: answer once the view shows that change")),
    responses(
        (status = 200, description = "The page (`X-Total-Count`, `X-Projection-Position`, `X-Projection-Last-Event-At`)", body = [Appointment]),
        (status = 400, description = "Invalid query, or `X-Wait-For` malformed or naming a change that was not made", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The view did not reach `X-Wait-For` in time", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn upcoming(State(state): State<AppState>, headers: HeaderMap, AppQuery(q): AppQuery<UpcomingQuery>) -> Result<Response> {
    let mut errors = BTreeMap::new();
    let patient_id = required_id("patientId", q.patient_id.as_deref(), &mut errors);
    let paging = page(q.page, q.size, &mut errors);
    let Some(patient_id) = patient_id.filter(|_| errors.is_empty()) else { return Err(Error::Validation(errors)) };
    answer(&state, &headers, async || projection::patient_upcoming(&state.db, patient_id, Utc::now(), paging).await).await
}
