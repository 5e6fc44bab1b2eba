//! `GET /audit`: the audit trail for `audit.read`, as a FHIR R4 `Bundle` of `AuditEvent`s.

use std::collections::BTreeMap;

use axum::{extract::State, routing::get, Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use common::problem::Problem;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::FromRow;
use uuid::Uuid;

use super::{extract::AppQuery, AppState};
use crate::{Error, Result};

pub fn routes() -> Router<AppState> {
    Router::new().route("/audit", get(search))
}

const DEFAULT_SIZE: i64 = 50;
const MAX_SIZE: i64 = 500;
/// Where our extensions of `AuditEvent` are defined.
const EXTENSION_BASE: &str = "https://patient-platform.example/fhir/StructureDefinition";

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only events about this patient.
    #[param(value_type = Option<uuid::Uuid>)]
    patient_id: Option<String>,
    /// Only events by this caller (`sub`; empty: anyone).
    #[param(max_length = 255, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    subject: Option<String>,
    /// Recorded at or after (RFC 3339).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    from: Option<String>,
    /// Recorded before (RFC 3339).
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    to: Option<String>,
    /// 0-based page number.
    #[param(minimum = 0)]
    page: Option<i64>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 500)]
    size: Option<i64>,
}

/// A validated search.
struct Search {
    patient_id: Option<Uuid>,
    subject: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    page: i64,
    size: i64,
}

impl TryFrom<AuditQuery> for Search {
    type Error = Error;

    fn try_from(q: AuditQuery) -> Result<Self> {
        let mut errors = BTreeMap::new();
        let mut invalid = |field: &str, why: &str| {
            errors.insert(field.to_owned(), why.to_owned());
        };
        // Ids and instants as documented: exactly, no blank stand-in for "absent".
        let patient_id = match q.patient_id.as_deref() {
            None => None,
            Some(raw) => {
                let id = crate::domain::parse_uuid(raw);
                if id.is_none() {
                    invalid("patientId", "must be a UUID like 123e4567-e89b-12d3-a456-426614174000");
                }
                id
            }
        };
        let subject = q.subject.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        if subject.as_deref().is_some_and(|s| s.chars().any(char::is_control) || s.chars().count() > 255) {
            invalid("subject", "must be a subject id without control characters");
        }
        let mut instant = |field: &str, raw: Option<String>| match raw.as_deref() {
            None => None,
            Some(raw) => DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| invalid(field, "must be an RFC 3339 date-time, e.g. 2026-11-23T10:00:00Z"))
                .ok(),
        };
        let (from, to) = (instant("from", q.from), instant("to", q.to));
        let page = q.page.unwrap_or(0);
        if page < 0 {
            invalid("page", "must be 0 or greater");
        }
        let size = q.size.unwrap_or(DEFAULT_SIZE);
        if !(1..=MAX_SIZE).contains(&size) {
            invalid("size", &format!("must be between 1 and {MAX_SIZE}"));
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        Ok(Self { patient_id, subject, from, to, page, size })
    }
}

#[derive(Debug, FromRow)]
struct Entry {
    seq: i64,
    recorded_at: DateTime<Utc>,
    subject: Option<String>,
    client_id: Option<String>,
    action: String,
    patient_id: Option<Uuid>,
    query: Option<String>,
    outcome: i16,
    request_id: Option<String>,
    trace_id: Option<String>,
    client_address: Option<String>,
    forwarded_for: Option<String>,
}

const FILTER: &str = "($1::uuid IS NULL OR patient_id = $1) AND ($2::text IS NULL OR subject = $2)
                      AND ($3::timestamptz IS NULL OR recorded_at >= $3) AND ($4::timestamptz IS NULL OR recorded_at < $4)";

#[tracing::instrument(skip_all)]
/// Who touched patient data: a FHIR R4 `Bundle` of `AuditEvent`s, in the order they were recorded.
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "A FHIR R4 searchset Bundle of AuditEvent resources", body = serde_json::Value),
        (status = 400, description = "A malformed filter or page", body = Problem, content_type = "application/problem+json"),
    ))]
async fn search(State(state): State<AppState>, AppQuery(query): AppQuery<AuditQuery>) -> Result<Json<Value>> {
    let s = Search::try_from(query)?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM audit_log WHERE {FILTER}"))
        .bind(s.patient_id)
        .bind(&s.subject)
        .bind(s.from)
        .bind(s.to)
        .fetch_one(&state.db)
        .await?;
    let entries: Vec<Entry> = sqlx::query_as(&format!(
        "SELECT seq, recorded_at, subject, client_id, action, patient_id, query, outcome, request_id, trace_id,
                client_address, forwarded_for
         FROM audit_log WHERE {FILTER} ORDER BY seq LIMIT $5 OFFSET $6"
    ))
    .bind(s.patient_id)
    .bind(&s.subject)
    .bind(s.from)
    .bind(s.to)
    .bind(s.size)
    .bind(s.page.saturating_mul(s.size))
    .fetch_all(&state.db)
    .await?;
    Ok(Json(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "entry": entries.iter().map(|e| json!({"resource": audit_event(e)})).collect::<Vec<_>>(),
    })))
}

/// One record as a FHIR R4 `AuditEvent` (type `rest`, subtype the RESTful interaction).
fn audit_event(e: &Entry) -> Value {
    let (interaction, action) = match e.action.as_str() {
        "patient.search" => ("search-type", "E"),
        "patient.create" => ("create", "C"),
        "patient.update" => ("update", "U"),
        "patient.delete" => ("delete", "D"),
        _ => ("read", "R"),
    };
    // FHIR outcome codes: 0 success, 4 minor failure (refused, invalid), 8 serious failure.
    let outcome = match e.outcome {
        200..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut entity = Vec::new();
    if let Some(id) = e.patient_id {
        let kind = if e.action == "bill.read" { "Account" } else { "Patient" };
        entity.push(json!({
            "what": {"reference": format!("Patient/{id}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "description": kind,
        }));
    }
    if let Some(query) = &e.query {
        use base64::Engine as _;
        entity.push(json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "description": "patient list filter (which filters, never their values)",
            "query": base64::engine::general_purpose::STANDARD.encode(query),
        }));
    }
    let mut extension = Vec::new();
    for (name, value) in [("request-id", &e.request_id), ("trace-id", &e.trace_id), ("forwarded-for", &e.forwarded_for)] {
        if let Some(value) = value {
            extension.push(json!({"url": format!("{EXTENSION_BASE}/{name}"), "valueString": value}));
        }
    }
    extension.push(json!({"url": format!("{EXTENSION_BASE}/action"), "valueCode": e.action}));
    json!({
        "resourceType": "AuditEvent",
        "id": e.seq.to_string(),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": action,
        "recorded": e.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "outcome": outcome,
        "outcomeDesc": e.outcome.to_string(),
        "agent": [{
            "who": {"identifier": {"value": e.subject}},
            "altId": e.client_id,
            "requestor": true,
            "network": e.client_address.as_ref().map(|a| json!({"address": a, "type": "2"})),
        }],
        "source": {"observer": {"display": "patient-service"}},
        "entity": entity,
        "extension": extension,
    })
}
