//! Commands (the write side): book, reschedule, cancel, check in, complete, no-show. Each runs in
//! one transaction with its event in the outbox, answers the appointment with its `ETag`, and a
//! consistency token a query can wait for.

use anyhow::Context;
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use chrono::Utc;
use common::{extract::AppJson, problem::Problem};
use uuid::Uuid;

use super::{appointment_id, etag, if_match, AppState, CONSISTENCY_TOKEN};
use crate::{
    domain::{Appointment, BookRequest, Command, Slot, SlotRequest, Status},
    error::is_double_booking,
    events::{self, Detail, CANCELLED_BY_REQUEST},
    projection::Token,
    repo, Error, Result,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/appointments", post(book))
        .route("/appointments/{id}/reschedule", post(reschedule))
        .route("/appointments/{id}/cancel", post(cancel))
        .route("/appointments/{id}/check-in", post(check_in))
        .route("/appointments/{id}/complete", post(complete))
        .route("/appointments/{id}/no-show", post(no_show))
}

/// The answer to a command: the appointment, its `ETag` and consistency token (and where it
/// lives, as the client sees it, for a booking).
fn answer(headers: &HeaderMap, status: StatusCode, appointment: Appointment) -> Response {
    let token = Token { appointment_id: appointment.id, version: appointment.version }.to_string();
    let location = format!("{}/appointments/{}", common::extract::forwarded_prefix(headers), appointment.id);
    let tag = etag(appointment.version);
    let mut response = (status, Json(appointment)).into_response();
    let out = response.headers_mut();
    out.insert(header::ETAG, tag);
    out.insert(CONSISTENCY_TOKEN.clone(), HeaderValue::from_str(&token).expect("a token is a header value"));
    if status == StatusCode::CREATED {
        out.insert(header::LOCATION, HeaderValue::from_str(&location).expect("a plain path is a header value"));
    }
    response
}

/// A refused double booking: 409 naming the appointment in the way.
async fn slot_taken(state: &AppState, clinician_id: Uuid, slot: &Slot, except: Option<Uuid>) -> Error {
    match repo::conflicting(&state.db, clinician_id, slot, except).await {
        Ok(other) => Error::SlotTaken(other),
        Err(err) => err.into(),
    }
}

/// Book an appointment.
#[utoipa::path(post, path = "/appointments", tag = "appointments", request_body = BookRequest,
    responses(
        (status = 201, description = "Booked (`Location`, `ETag`, `X-Consistency-Token`)", body = Appointment),
        (status = 400, description = "Invalid request (per-field `errors`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The clinician is booked in an overlapping slot (`conflictingAppointmentId`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The patient is unknown or deleted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn book(State(state): State<AppState>, headers: HeaderMap, AppJson(body): AppJson<BookRequest>) -> Result<Response> {
    let booking = body.parse(Utc::now(), state.max_minutes).map_err(Error::Validation)?;
    let mut tx = state.db.begin().await.context("failed to begin transaction")?;
    match repo::patient_deleted(&mut tx, booking.patient_id).await? {
        None => return Err(Error::UnknownPatient("the patient is not known to the appointment service (yet)")),
        Some(true) => return Err(Error::UnknownPatient("the patient was deleted")),
        Some(false) => {}
    }
    repo::lock_schedule(&mut tx, booking.clinician_id).await?;
    let appointment = match repo::insert(&mut tx, Uuid::new_v4(), &booking).await {
        Ok(appointment) => appointment,
        Err(err) if is_double_booking(&err) => {
            drop(tx);
            return Err(slot_taken(&state, booking.clinician_id, &booking.slot, None).await);
        }
        Err(err) => return Err(err.into()),
    };
    let traceparent = common::telemetry::current_traceparent();
    events::record(&mut tx, proto::appointment_event_type::BOOKED, &appointment, Detail::default(), traceparent.as_deref())
        .await
        .context("failed to record the booking event")?;
    tx.commit().await.context("failed to commit the booking")?;
    tracing::info!(appointment_id = %appointment.id, "appointment booked");
    Ok(answer(&headers, StatusCode::CREATED, appointment))
}

/// Runs `command` on appointment `raw_id`: version check, transition table, change and event.
///
/// Locks are taken in the order every writer takes them — the patient (a booking, a
/// reschedule; the replica when the patient is deleted), the clinician's schedule, then the
/// appointment — so no two writers ever wait for each other in a cycle. The appointment's
/// patient and clinician never change, so they are read before any lock.
async fn run(state: &AppState, raw_id: &str, command: Command, headers: &HeaderMap, slot: Option<Slot>) -> Result<Response> {
    let id = appointment_id(raw_id)?;
    let expected = if_match(headers)?;
    let known = repo::get(&state.db, id).await?.ok_or(Error::NotFound)?;
    let mut tx = state.db.begin().await.context("failed to begin transaction")?;
    let patient_deleted = match command {
        Command::Reschedule => repo::patient_deleted(&mut tx, known.patient_id).await? == Some(true),
        _ => false,
    };
    repo::lock_schedule(&mut tx, known.clinician_id).await?;
    let current = repo::lock(&mut tx, id).await?.ok_or(Error::NotFound)?;
    if common::conditional::is_stale(expected.as_deref(), current.version) {
        return Err(Error::StaleVersion { current: current.version });
    }
    let status = Status::parse(&current.status).context("unknown status in the database")?;
    if !status.can_become(command.target()) {
        return Err(Error::InvalidTransition { verb: command.verb(), status: current.status });
    }
    if command == Command::NoShow && current.starts_at > Utc::now() {
        return Err(Error::NotStarted);
    }
    // A BOOKED appointment that has ended was missed: it is recorded as such (no-show), never
    // cancelled, checked in or moved after the fact.
    if matches!(command, Command::Cancel | Command::CheckIn | Command::Reschedule) && current.ends_at <= Utc::now() {
        return Err(Error::Ended(command.verb()));
    }
    if command == Command::CheckIn && current.starts_at - state.check_in_opens > Utc::now() {
        return Err(Error::CheckInNotOpen(state.check_in_opens.num_minutes()));
    }
    // A new slot is a booking: not for a deleted patient (whose appointment was under way when
    // the deletion came, so it was not cancelled). After the version and status checks, so a
    // stale `If-Match` is a 412 and an appointment the deletion cancelled a 409, as ever.
    if patient_deleted {
        return Err(Error::UnknownPatient("the patient was deleted"));
    }
    let updated = match repo::change(&mut tx, id, command.target(), slot.as_ref()).await {
        Ok(updated) => updated,
        Err(err) if is_double_booking(&err) => {
            drop(tx);
            let slot = slot.expect("only a new slot can overlap");
            return Err(slot_taken(state, current.clinician_id, &slot, Some(id)).await);
        }
        Err(err) => return Err(err.into()),
    };
    let detail = match command {
        Command::Cancel => Detail { cancel_reason: CANCELLED_BY_REQUEST, previous_starts_at: None },
        Command::Reschedule => Detail { cancel_reason: "", previous_starts_at: Some(current.starts_at) },
        _ => Detail::default(),
    };
    let traceparent = common::telemetry::current_traceparent();
    events::record(&mut tx, command.event_type(), &updated, detail, traceparent.as_deref())
        .await
        .context("failed to record the event")?;
    tx.commit().await.context("failed to commit the change")?;
    tracing::info!(appointment_id = %id, event_type = command.event_type(), version = updated.version, "appointment changed");
    Ok(answer(headers, StatusCode::OK, updated))
}

/// Move a BOOKED appointment that has not ended to another slot.
#[utoipa::path(post, path = "/appointments/{id}/reschedule", tag = "appointments", request_body = SlotRequest,
    params(("id" = Uuid, Path, description = "Appointment id"), ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on")),
    responses(
        (status = 200, description = "Rescheduled (`ETag`, `X-Consistency-Token`)", body = Appointment),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such appointment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not BOOKED, ended already, or the clinician is booked then (`conflictingAppointmentId`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names an older version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The patient was deleted", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all)]
async fn reschedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppJson(body): AppJson<SlotRequest>,
) -> Result<Response> {
    let mut errors = Default::default();
    let slot = body.parse(Utc::now(), state.max_minutes, &mut errors).ok_or(Error::Validation(errors))?;
    run(&state, &id, Command::Reschedule, &headers, Some(slot)).await
}

macro_rules! status_command {
    ($name:ident, $path:literal, $command:expr, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(post, path = $path, tag = "appointments",
            params(("id" = Uuid, Path, description = "Appointment id"), ("If-Match" = Option<String>, Header, description = "The `ETag` the change is based on")),
            responses(
                (status = 200, description = "Changed (`ETag`, `X-Consistency-Token`)", body = Appointment),
                (status = 400, description = "Malformed id or If-Match", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "No such appointment", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "The appointment's status does not allow this (or its time does not yet: a check-in before `CHECK_IN_OPENS_MINUTES` ahead of the start, a no-show before the start; a cancellation or check-in after the end)", body = Problem, content_type = "application/problem+json"),
                (status = 412, description = "`If-Match` names an older version", body = Problem, content_type = "application/problem+json"),
            ))]
        #[tracing::instrument(skip_all)]
        async fn $name(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response> {
            run(&state, &id, $command, &headers, None).await
        }
    };
}

status_command!(
    cancel,
    "/appointments/{id}/cancel",
    Command::Cancel,
    "Cancel a BOOKED appointment (before its end: one that has ended is a no-show)."
);
status_command!(
    check_in,
    "/appointments/{id}/check-in",
    Command::CheckIn,
    "Check the patient in: from `CHECK_IN_OPENS_MINUTES` (60) before the start until the end."
);
status_command!(complete, "/appointments/{id}/complete", Command::Complete, "Complete a checked-in appointment.");
status_command!(
    no_show,
    "/appointments/{id}/no-show",
    Command::NoShow,
    "Record that the patient did not come (once it has started)."
);
