//! SQL of the aggregates. An event is recorded and applied by one statement (the
//! `apply_patient_event` function of the migrations): both happen or neither.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Kinds of patient events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Updated,
    Deleted,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            proto::event_type::PATIENT_CREATED => Some(Kind::Created),
            proto::event_type::PATIENT_UPDATED => Some(Kind::Updated),
            proto::event_type::PATIENT_DELETED => Some(Kind::Deleted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Created => proto::event_type::PATIENT_CREATED,
            Kind::Updated => proto::event_type::PATIENT_UPDATED,
            Kind::Deleted => proto::event_type::PATIENT_DELETED,
        }
    }
}

/// The parts of a `PatientEvent` the aggregates use (no personal data beyond the dates).
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: Uuid,
    pub patient_id: Uuid,
    pub kind: Kind,
    pub date_of_birth: Option<NaiveDate>,
    pub registered_date: Option<NaiveDate>,
    /// The patient's change number (0: not given, by producers that predate it).
    pub sequence: u64,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Counted, and the patient's state changed.
    Applied,
    /// Applied before (a redelivery): nothing changed.
    Duplicate,
    /// Older than what was applied for this patient: counted, state kept.
    Stale,
}

/// Records the event id and applies the event in ONE statement (the migration's
/// `apply_patient_event`): a redelivered event finds its id and changes nothing, a late older
/// event of a patient is counted but never undoes a newer one.
#[tracing::instrument(skip_all, fields(event_id = %e.event_id, patient_id = %e.patient_id, kind = e.kind.as_str()))]
pub async fn apply(db: &PgPool, e: &Event) -> sqlx::Result<Applied> {
    let month = e.month();
    let outcome: String = sqlx::query_scalar("SELECT apply_patient_event($1, $2, $3, $4, $5, $6, $7)")
        .bind(e.event_id)
        .bind(e.kind.as_str())
        .bind(e.patient_id)
        .bind(e.date_of_birth)
        .bind(e.registered_date)
        .bind(month)
        .bind(e.sequence_param())
        .fetch_one(db)
        .await?;
    Applied::parse(&outcome)
}

/// Records and applies several events, in order, in ONE statement (the migration's
/// `apply_patient_events`): all of them or none. Each event's outcome, in the same order.
#[tracing::instrument(skip_all, fields(events = events.len()))]
pub async fn apply_all(db: &PgPool, events: &[Event]) -> sqlx::Result<Vec<Applied>> {
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT apply_patient_events($1, $2, $3, $4, $5, $6, $7)")
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.patient_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.date_of_birth).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.registered_date).collect::<Vec<_>>())
        .bind(events.iter().map(Event::month).collect::<Vec<_>>())
        .bind(events.iter().map(Event::sequence_param).collect::<Vec<_>>())
        .fetch_one(db)
        .await?;
    if outcomes.len() != events.len() {
        return Err(sqlx::Error::Protocol(format!(
            "apply_patient_events answered {} outcomes for {} events",
            outcomes.len(),
            events.len()
        )));
    }
    outcomes.iter().map(|o| Applied::parse(o)).collect()
}

impl Applied {
    fn parse(outcome: &str) -> sqlx::Result<Self> {
        match outcome {
            "applied" => Ok(Applied::Applied),
            "duplicate" => Ok(Applied::Duplicate),
            "stale" => Ok(Applied::Stale),
            other => Err(sqlx::Error::Protocol(format!("analytics' database answered the outcome {other:?}"))),
        }
    }
}

impl Event {
    /// The registration's month, the key of `registrations_per_month` (YYYY-MM).
    fn month(&self) -> Option<String> {
        self.registered_date.map(|d| d.format("%Y-%m").to_string())
    }

    /// The sequence as the database stores it. Past i64 no producer counts: taken as unknown (0),
    /// as billing does, so one bad event cannot make every later change of its patient stale.
    fn sequence_param(&self) -> i64 {
        i64::try_from(self.sequence).unwrap_or(0)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub patients_created: i64,
    pub patients_updated: i64,
    pub patients_deleted: i64,
    pub active_patients: i64,
    pub registrations_per_month: BTreeMap<String, i64>,
    pub age_bands: BTreeMap<&'static str, i64>,
    /// Per month of their start (`YYYY-MM`): appointments booked, cancelled, not attended.
    pub appointments_per_month: BTreeMap<String, crate::appointments::Month>,
}

/// Age bands of active patients (SPEC §8), by age today.
pub const AGE_BANDS: [&str; 5] = ["0-17", "18-34", "35-49", "50-64", "65+"];

#[tracing::instrument(skip_all)]
pub async fn summary(pool: &PgPool) -> sqlx::Result<Summary> {
    let counts: Vec<(String, i64)> = sqlx::query_as("SELECT event_type, count FROM event_counts").fetch_all(pool).await?;
    let count = |k: Kind| counts.iter().find(|(t, _)| t == k.as_str()).map_or(0, |(_, c)| *c);
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM active_patients").fetch_one(pool).await?;
    let months: Vec<(String, i64)> =
        sqlx::query_as("SELECT month, count FROM registrations_per_month ORDER BY month").fetch_all(pool).await?;
    let bands: Vec<(String, i64)> = sqlx::query_as(
        r#"
        SELECT CASE WHEN age < 18 THEN '0-17' WHEN age < 35 THEN '18-34' WHEN age < 50 THEN '35-49'
                    WHEN age < 65 THEN '50-64' ELSE '65+' END AS band,
               count(*)
        FROM (SELECT extract(year FROM age(current_date, date_of_birth))::int AS age
              FROM active_patients WHERE date_of_birth IS NOT NULL) ages
        GROUP BY band
        "#,
    )
    .fetch_all(pool)
    .await?;
    let mut age_bands: BTreeMap<&'static str, i64> = AGE_BANDS.iter().map(|b| (*b, 0)).collect();
    for (band, n) in bands {
        if let Some(slot) = AGE_BANDS.iter().find(|b| **b == band) {
            age_bands.insert(slot, n);
        }
    }
    Ok(Summary {
        patients_created: count(Kind::Created),
        patients_updated: count(Kind::Updated),
        patients_deleted: count(Kind::Deleted),
        active_patients: active,
        registrations_per_month: months.into_iter().collect(),
        age_bands,
        appointments_per_month: crate::appointments::per_month(pool).await?,
    })
}
