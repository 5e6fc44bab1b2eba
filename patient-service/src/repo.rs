//! SQL of the `patients` table, one function per statement. Writes take the caller's executor:
//! the handler opens a transaction when several statements must commit together.

use axum::http::StatusCode;
use sqlx::{error::BoxDynError, postgres::PgArguments, Arguments, PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use crate::{
    audit::AuditContext,
    domain::{Patient, ValidPatient},
    outbox::NewEvent,
};

pub type Tx<'a> = Transaction<'a, Postgres>;

const COLUMNS: &str = "id, name, email, address, date_of_birth, registered_date, updated_at, version";

/// Filters of the list endpoint.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Exact email, case-insensitive.
    pub email: Option<String>,
}

impl ListFilter {
    /// The name filter as an ILIKE pattern with the user's `%`, `_` and `\` taken literally.
    fn name_pattern(&self) -> Option<String> {
        self.name.as_ref().map(|n| {
            let escaped = n.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

const FILTER: &str = r#"($1::text IS NULL OR name ILIKE $1 ESCAPE '\') AND ($2::text IS NULL OR lower(email) = lower($2))"#;

/// Inserts the patient, its outbox event and the create's audit record (`outcome`) in ONE
/// statement, atomic on its own: one round trip instead of begin, three inserts and commit, and
/// the audit chain's head is locked only while the statement runs.
#[tracing::instrument(skip_all, fields(patient_id = %patient.id, event_id = %event.event_id))]
pub async fn insert_with_event(
    db: impl PgExecutor<'_>,
    patient: &Patient,
    event: &NewEvent<'_>,
    audit: &AuditContext,
    outcome: StatusCode,
) -> sqlx::Result<Patient> {
    let mut args = PgArguments::default();
    let add = |result: Result<(), BoxDynError>| result.map_err(sqlx::Error::Encode);
    add(args.add(patient.id))?;
    add(args.add(&patient.name))?;
    add(args.add(&patient.email))?;
    add(args.add(&patient.address))?;
    add(args.add(patient.date_of_birth))?;
    add(args.add(patient.registered_date))?;
    add(args.add(event.event_id))?;
    add(args.add(event.kind.as_str()))?;
    add(args.add(&event.payload))?;
    add(args.add(event.traceparent))?;
    let audit_values = audit.add_values(&mut args, outcome).map_err(sqlx::Error::Encode)?;
    let audit_columns = AuditContext::COLUMNS;
    let sql = format!(
        r#"
        WITH inserted AS (
            INSERT INTO patients (id, name, email, address, date_of_birth, registered_date)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {COLUMNS}
        ), event AS (
            INSERT INTO outbox (event_id, patient_id, event_type, payload, traceparent)
            SELECT $7, id, $8, $9, $10 FROM inserted
        ), audited AS (
            INSERT INTO audit_log (patient_id, {audit_columns}, prev_hash, hash)
            SELECT id, {audit_values}, '', '' FROM inserted
        )
        SELECT {COLUMNS} FROM inserted
        "#
    );
    sqlx::query_as_with::<_, Patient, _>(&sql, args).fetch_one(db).await
}

/// Updates every field; a `None` registered date keeps the stored one. `None` when no such patient.
#[tracing::instrument(skip_all, fields(patient_id = %id))]
pub async fn update(tx: &mut Tx<'_>, id: Uuid, p: &ValidPatient) -> sqlx::Result<Option<Patient>> {
    sqlx::query_as::<_, Patient>(&format!(
        r#"
        UPDATE patients
        SET name = $2, email = $3, address = $4, date_of_birth = $5,
            registered_date = COALESCE($6, registered_date), updated_at = now(), version = version + 1
        WHERE id = $1
        RETURNING {COLUMNS}
        "#
    ))
    .bind(id)
    .bind(p.name.as_str())
    .bind(p.email.as_str())
    .bind(p.address.as_str())
    .bind(p.date_of_birth.date())
    .bind(p.registered_date)
    .fetch_optional(&mut **tx)
    .await
}

/// The patient's version, its row locked until the transaction ends; `None` when no such patient.
#[tracing::instrument(skip_all, fields(patient_id = %id))]
pub async fn lock_version(tx: &mut Tx<'_>, id: Uuid) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT version FROM patients WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(&mut **tx).await
}

/// Deletes and returns the patient, `None` when there was none.
#[tracing::instrument(skip_all, fields(patient_id = %id))]
pub async fn delete(tx: &mut Tx<'_>, id: Uuid) -> sqlx::Result<Option<Patient>> {
    sqlx::query_as::<_, Patient>(&format!("DELETE FROM patients WHERE id = $1 RETURNING {COLUMNS}"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

/// Whether a patient already uses `email` (case-insensitively, as the unique index decides).
#[tracing::instrument(skip_all)]
pub async fn email_taken(db: impl PgExecutor<'_>, email: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM patients WHERE lower(email) = lower($1))").bind(email).fetch_one(db).await
}

#[tracing::instrument(skip(db))]
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Patient>> {
    sqlx::query_as::<_, Patient>(&format!("SELECT {COLUMNS} FROM patients WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// One page of patients in a stable order (oldest first).
#[tracing::instrument(skip_all, fields(limit, offset))]
pub async fn list(db: impl PgExecutor<'_>, filter: &ListFilter, limit: i64, offset: i64) -> sqlx::Result<Vec<Patient>> {
    sqlx::query_as::<_, Patient>(&format!(
        "SELECT {COLUMNS} FROM patients WHERE {FILTER} ORDER BY created_at, id LIMIT $3 OFFSET $4"
    ))
    .bind(filter.name_pattern())
    .bind(&filter.email)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await
}

/// How many patients match the filter.
#[tracing::instrument(skip_all)]
pub async fn count(db: impl PgExecutor<'_>, filter: &ListFilter) -> sqlx::Result<i64> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM patients WHERE {FILTER}"))
        .bind(filter.name_pattern())
        .bind(&filter.email)
        .fetch_one(db)
        .await
}
