//! `/patients` handlers.

use anyhow::Context;
use axum::{
    extract::{Extension, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use chrono::Utc;
use common::problem::Problem;
use serde::Serialize;
use uuid::Uuid;

use super::{
    extract::{AppJson, AppQuery, PatientId},
    page::{ListQuery, PageRequest},
    AppState,
};
use crate::{
    audit::{AuditContext, AuditedInTransaction},
    domain::{PatientInput, PatientRequest, PatientResponse, ValidPatient},
    idempotency::{self, Claim},
    outbox::{self, EventType},
    repo, Error, Result,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/patients", get(list).post(create))
        .route("/patients/{id}", get(read).put(update).delete(remove))
        .route("/patients/{id}/bill", get(bill))
}

static X_TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");

/// A page of patients, filtered by name or email.
#[utoipa::path(get, path = "/patients", tag = "patients", params(ListQuery),
    responses(
        (status = 200, description = "The page", body = [PatientResponse], headers(
            ("X-Total-Count" = i64, description = "Patients matching the filters"),
            ("Link" = String, description = "RFC 8288 links: first, prev, next, last"))),
        (status = 400, description = "A malformed page, size or filter", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(page, size))]
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<impl IntoResponse> {
    let req = PageRequest::try_from(query)?;
    tracing::Span::current().record("page", req.page).record("size", req.size);
    let total = repo::count(&state.db, &req.filter).await?;
    let patients = repo::list(&state.db, &req.filter, req.size, req.offset()).await?;
    let body: Vec<PatientResponse> = patients.into_iter().map(Into::into).collect();
    let link = req.link_header(&format!("{}/patients", common::extract::forwarded_prefix(&headers)), total);
    Ok((
        [
            (X_TOTAL_COUNT.clone(), HeaderValue::from(total)),
            (header::LINK, HeaderValue::from_str(&link).context("invalid Link header")?),
        ],
        Json(body),
    ))
}

/// One patient; its `ETag` is the version a change may name in `If-Match`.
#[utoipa::path(get, path = "/patients/{id}", tag = "patients", params(("id" = Uuid, Path, description = "The patient's id")),
    responses((status = 200, description = "The patient", body = PatientResponse, headers(("ETag" = String, description = "The record's version, e.g. \"3\", for If-Match"))), (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No patient with this id", body = Problem, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(patient_id = %id))]
async fn read(State(state): State<AppState>, PatientId(id): PatientId) -> Result<impl IntoResponse> {
    let patient = repo::find(&state.db, id).await?.ok_or(Error::NotFound)?;
    Ok(([(header::ETAG, common::conditional::etag(patient.version))], Json(PatientResponse::from(patient))))
}

/// The versions a change's `If-Match` accepts (none: any).
fn if_match(headers: &HeaderMap) -> Result<Option<Vec<i64>>> {
    common::conditional::if_match(headers).map_err(|message| Error::BadRequest(message.into()))
}

/// With `If-Match`, the patient locked and its version checked (412 when stale); without, nothing.
async fn check_version(tx: &mut repo::Tx<'_>, id: Uuid, expected: Option<&[i64]>) -> Result<()> {
    if expected.is_none() {
        return Ok(());
    }
    let current = repo::lock_version(tx, id).await?.ok_or(Error::NotFound)?;
    match common::conditional::is_stale(expected, current) {
        true => Err(Error::StaleVersion { current }),
        false => Ok(()),
    }
}

/// Creates a patient and opens its billing account; nothing is saved when billing is unavailable.
//
// Open the billing account, then insert the patient, its event and its audit record in one
// statement (with an idempotency key, in one transaction with the key's outcome). No database
// connection is held while billing is called: a slow billing must not drain the pool under
// every other endpoint. If billing fails, nothing was written here. With an
// `Idempotency-Key` the patient id is reserved with the key, so a retry (after a 503, a timeout
// or a lost response) reuses it: billing, idempotent per patient id, opens no second account,
// and a create that already committed is replayed. Emails are checked before billing is called,
// so the common conflict never reaches billing at all.
#[utoipa::path(post, path = "/patients", tag = "patients", request_body = PatientRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r#"^"?[ !#-\[\]-~]+"?$"#,
        description = "Makes a retry safe: the same key and body replay the first 201 for 24 h (visible ASCII, no quote or backslash)")),
    responses(
        (status = 201, description = "Created (or replayed for its Idempotency-Key)", body = PatientResponse, headers(
            ("Location" = String, description = "The new patient's URL"),
            ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 400, description = "Validation failed (per-field errors), malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is used by another patient, this key's first request still runs, or the patient this key created was deleted since", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "This Idempotency-Key was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Billing unavailable: nothing was saved, retry (Retry-After)", body = Problem,
            content_type = "application/problem+json", headers(("Retry-After" = i64, description = "Seconds"))),
    ))]
#[tracing::instrument(skip_all, fields(patient_id))]
async fn create(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditContext>,
    headers: HeaderMap,
    AppJson(body): AppJson<PatientRequest>,
) -> Result<Response> {
    let key = idempotency::Key::from_headers(&headers)?;
    let valid = body.validate(PatientInput::Create, today()).map_err(Error::Validation)?;
    let (id, lease) = match key {
        None => (Uuid::new_v4(), None),
        Some(key) => {
            let canonical = serde_json::to_string(&body).context("request body does not serialise")?;
            match idempotency::claim(&state.db, &audit.subject, &key, &canonical).await? {
                Claim::Proceed { patient_id } => {
                    (patient_id, Some(idempotency::Lease::new(state.db.clone(), &audit.subject, key)))
                }
                Claim::Replay { patient_id, response, location } => {
                    tracing::Span::current().record("patient_id", tracing::field::display(patient_id));
                    audit.record(&state.db, StatusCode::CREATED, Some(patient_id)).await?;
                    tracing::info!("create replayed for its idempotency key");
                    let location = HeaderValue::from_str(&location).context("invalid stored Location")?;
                    return Ok((
                        StatusCode::CREATED,
                        Extension(AuditedInTransaction),
                        [(header::LOCATION, location), (IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"))],
                        Json(response),
                    )
                        .into_response());
                }
                Claim::Mismatch => return Err(Error::IdempotencyKeyReused),
                Claim::InProgress => return Err(Error::IdempotencyKeyInUse),
                Claim::PatientDeleted => return Err(Error::IdempotencyKeyPatientDeleted),
            }
        }
    };
    tracing::Span::current().record("patient_id", tracing::field::display(id));
    let created = create_patient(&state, &audit, &headers, &valid, id, lease.as_ref().map(idempotency::Lease::key)).await?;
    // Any other way out of here (an error, or this future dropped with its client) frees the key.
    if let Some(lease) = lease {
        lease.completed();
    }
    Ok(created)
}

static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

async fn create_patient(
    state: &AppState,
    audit: &AuditContext,
    headers: &HeaderMap,
    valid: &ValidPatient,
    id: Uuid,
    key: Option<&idempotency::Key>,
) -> Result<Response> {
    if repo::email_taken(&state.db, valid.email.as_str()).await? {
        return Err(Error::EmailTaken);
    }
    let new = valid.new_patient(id).ok_or(Error::Validation(missing_registered_date()))?;
    state.billing.create_account(id, valid).await?;
    let trace = traceparent(headers);
    let event = outbox::NewEvent::new(EventType::Created, &new, trace.as_deref());
    let location = format!("{}/patients/{id}", common::extract::forwarded_prefix(headers));
    let body = match key {
        // One statement: the patient, its event and the audit record, atomic without a
        // transaction of ours.
        None => PatientResponse::from(repo::insert_with_event(&state.db, &new, &event, audit, StatusCode::CREATED).await?),
        Some(key) => {
            let mut tx = state.db.begin().await.context("failed to begin transaction")?;
            let body = PatientResponse::from(repo::insert_with_event(&mut *tx, &new, &event, audit, StatusCode::CREATED).await?);
            let stored = serde_json::to_value(&body).context("response does not serialise")?;
            idempotency::complete(&mut tx, &audit.subject, key, &stored, &location).await?;
            tx.commit().await.context("failed to commit patient create")?;
            body
        }
    };

    tracing::info!("patient created");
    Ok((
        StatusCode::CREATED,
        Extension(AuditedInTransaction),
        [(header::LOCATION, HeaderValue::from_str(&location).context("invalid Location header")?)],
        Json(body),
    )
        .into_response())
}

/// Replaces a patient's fields (`registeredDate` may be left out to keep it); with `If-Match`,
/// only if the patient is still at that version.
#[utoipa::path(put, path = "/patients/{id}", tag = "patients", request_body = PatientRequest,
    params(("id" = Uuid, Path, description = "The patient's id"),
        ("If-Match" = Option<String>, Header, description = "Change only this version (its ETag, e.g. \"3\"), else 412")),
    responses(
        (status = 200, description = "The updated patient", body = PatientResponse, headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "Validation failed, malformed JSON or id, or If-Match is malformed or empty", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No patient with this id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is used by another patient", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names a version that is no longer current (`currentVersion` in the body)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"), (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
    ))]
#[tracing::instrument(skip_all, fields(patient_id = %id))]
async fn update(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditContext>,
    headers: HeaderMap,
    PatientId(id): PatientId,
    AppJson(body): AppJson<PatientRequest>,
) -> Result<impl IntoResponse> {
    let valid = body.validate(PatientInput::Update, today()).map_err(Error::Validation)?;
    let expected = if_match(&headers)?;
    let mut tx = state.db.begin().await.context("failed to begin transaction")?;
    check_version(&mut tx, id, expected.as_deref()).await?;
    let patient = repo::update(&mut tx, id, &valid).await?.ok_or(Error::NotFound)?;
    if patient.registered_date < patient.date_of_birth {
        // The kept registered date (none was sent) would come before the new birth date: the
        // transaction is dropped, so nothing changes.
        let field = [("registeredDate".to_owned(), "must not be before dateOfBirth".to_owned())];
        return Err(Error::Validation(field.into_iter().collect()));
    }
    outbox::record(&mut tx, EventType::Updated, &patient, traceparent(&headers).as_deref()).await?;
    audit.record(&mut *tx, StatusCode::OK, Some(id)).await?;
    tx.commit().await.context("failed to commit patient update")?;
    tracing::info!("patient updated");
    let etag = common::conditional::etag(patient.version);
    Ok((Extension(AuditedInTransaction), [(header::ETAG, etag)], Json(PatientResponse::from(patient))))
}

/// Deletes a patient (its billing account is closed from the PATIENT_DELETED event); with
/// `If-Match`, only if the patient is still at that version.
#[utoipa::path(delete, path = "/patients/{id}", tag = "patients", params(("id" = Uuid, Path, description = "The patient's id"),
        ("If-Match" = Option<String>, Header, description = "Delete only this version (its ETag, e.g. \"3\"), else 412")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "The id is not a UUID, or If-Match is malformed", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No patient with this id", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`If-Match` names a version that is no longer current (`currentVersion` in the body)", body = Problem, content_type = "application/problem+json")))]
#[tracing::instrument(skip_all, fields(patient_id = %id))]
async fn remove(
    State(state): State<AppState>,
    Extension(audit): Extension<AuditContext>,
    headers: HeaderMap,
    PatientId(id): PatientId,
) -> Result<impl IntoResponse> {
    let expected = if_match(&headers)?;
    let mut tx = state.db.begin().await.context("failed to begin transaction")?;
    check_version(&mut tx, id, expected.as_deref()).await?;
    let patient = repo::delete(&mut tx, id).await?.ok_or(Error::NotFound)?;
    outbox::record(&mut tx, EventType::Deleted, &patient, traceparent(&headers).as_deref()).await?;
    idempotency::forget_patient(&mut *tx, id).await?;
    audit.record(&mut *tx, StatusCode::NO_CONTENT, Some(id)).await?;
    tx.commit().await.context("failed to commit patient delete")?;
    tracing::info!("patient deleted");
    Ok((StatusCode::NO_CONTENT, Extension(AuditedInTransaction)))
}

/// The patient's billing account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct BillResponse {
    account_id: String,
    patient_id: String,
    status: String,
    created_at: String,
}

/// The patient's billing account.
#[utoipa::path(get, path = "/patients/{id}/bill", tag = "patients", params(("id" = Uuid, Path, description = "The patient's id")),
    responses(
        (status = 200, description = "The account", body = BillResponse),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such patient, or no billing account", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Billing answered with an unexpected error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Billing unavailable (Retry-After)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = i64, description = "Seconds"))),
    ))]
#[tracing::instrument(skip_all, fields(patient_id = %id))]
async fn bill(State(state): State<AppState>, PatientId(id): PatientId) -> Result<Json<BillResponse>> {
    repo::find(&state.db, id).await?.ok_or(Error::NotFound)?;
    let account = state.billing.account(id).await?;
    Ok(Json(BillResponse {
        account_id: account.account_id,
        patient_id: account.patient_id,
        status: account.status,
        created_at: account.created_at,
    }))
}

/// The create's validation guarantees a registered date; kept as an error rather than a panic.
fn missing_registered_date() -> std::collections::BTreeMap<String, String> {
    [("registeredDate".to_owned(), "registeredDate is required".to_owned())].into()
}

/// Today where it is latest (UTC+14): a date that is today somewhere is not in the future.
fn today() -> chrono::NaiveDate {
    (Utc::now() + chrono::Duration::hours(14)).date_naive()
}

/// The W3C trace context of the request, carried onto the event.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    common::telemetry::current_traceparent()
        .or_else(|| headers.get("traceparent").and_then(|v| v.to_str().ok()).filter(|v| v.len() <= 128).map(str::to_owned))
}
