//! SQL of the aggregates, one function per statement group. Event writes take the caller's
//! transaction: recording the event id and applying it commit together or not at all.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

type Tx<'a> = Transaction<'a, Postgres>;

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

/// Records the event id; false when it was applied before (a redelivery).
#[tracing::instrument(skip_all, fields(event_id = %e.event_id))]
pub async fn record_event(tx: &mut Tx<'_>, e: &Event) -> sqlx::Result<bool> {
    let inserted = sqlx::query("INSERT INTO processed_events (event_id, event_type) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(e.event_id)
        .bind(e.kind.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Applies one event to every aggregate.
#[tracing::instrument(skip_all, fields(event_id = %e.event_id, patient_id = %e.patient_id, kind = e.kind.as_str()))]
pub async fn apply(tx: &mut Tx<'_>, e: &Event) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO event_counts (event_type, count) VALUES ($1, 1)
         ON CONFLICT (event_type) DO UPDATE SET count = event_counts.count + 1",
    )
    .bind(e.kind.as_str())
    .execute(&mut **tx)
    .await?;
    if let (Kind::Created, Some(registered)) = (e.kind, e.registered_date) {
        sqlx::query(
            "INSERT INTO registrations_per_month (month, count) VALUES ($1, 1)
             ON CONFLICT (month) DO UPDATE SET count = registrations_per_month.count + 1",
        )
        .bind(registered.format("%Y-%m").to_string())
        .execute(&mut **tx)
        .await?;
    }
    // Counted above in any order; the patient's state only moves forward.
    if e.sequence > 0 && !newest_for_patient(tx, e).await? {
        tracing::info!(sequence = e.sequence, "older than what was applied for this patient: state kept");
        return Ok(());
    }
    match e.kind {
        Kind::Created => {
            sqlx::query(
                "INSERT INTO active_patients (patient_id, date_of_birth, registered_date) VALUES ($1, $2, $3)
                 ON CONFLICT (patient_id) DO UPDATE SET date_of_birth = $2, registered_date = $3",
            )
            .bind(e.patient_id)
            .bind(e.date_of_birth)
            .bind(e.registered_date)
            .execute(&mut **tx)
            .await?;
        }
        // With a sequence an update carries the whole state: it may arrive before its create.
        Kind::Updated if e.sequence > 0 => {
            sqlx::query(
                "INSERT INTO active_patients (patient_id, date_of_birth, registered_date) VALUES ($1, $2, $3)
                 ON CONFLICT (patient_id) DO UPDATE SET date_of_birth = COALESCE($2, active_patients.date_of_birth),
                 registered_date = COALESCE($3, active_patients.registered_date)",
            )
            .bind(e.patient_id)
            .bind(e.date_of_birth)
            .bind(e.registered_date)
            .execute(&mut **tx)
            .await?;
        }
        Kind::Updated => {
            sqlx::query(
                "UPDATE active_patients SET date_of_birth = COALESCE($2, date_of_birth),
                 registered_date = COALESCE($3, registered_date) WHERE patient_id = $1",
            )
            .bind(e.patient_id)
            .bind(e.date_of_birth)
            .bind(e.registered_date)
            .execute(&mut **tx)
            .await?;
        }
        Kind::Deleted => {
            sqlx::query("DELETE FROM active_patients WHERE patient_id = $1").bind(e.patient_id).execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// The aggregates as served by `GET /analytics/summary`.
/// Records `e.sequence` as the patient's newest change; false (nothing recorded) when a newer or
/// the same one was applied already.
async fn newest_for_patient(tx: &mut Tx<'_>, e: &Event) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "INSERT INTO patient_sequence (patient_id, sequence) VALUES ($1, $2)
         ON CONFLICT (patient_id) DO UPDATE SET sequence = EXCLUDED.sequence
         WHERE patient_sequence.sequence < EXCLUDED.sequence",
    )
    .bind(e.patient_id)
    .bind(i64::try_from(e.sequence).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// The aggregates, each event counted once.
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
