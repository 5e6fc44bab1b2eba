//! SQL of billing accounts, one function per statement.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::NewAccount;

/// A stored billing account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// Creates the patient's account, or returns the one that exists: a single statement, so
/// concurrent repeats for one patient all get the same row (the unique index serialises them).
#[tracing::instrument(skip(pool, new), fields(patient_id = %new.patient_id))]
pub async fn create_or_get(pool: &PgPool, new: &NewAccount) -> anyhow::Result<(Account, bool)> {
    let candidate = Uuid::new_v4();
    let account = sqlx::query_as::<_, Account>(
        r#"
        INSERT INTO billing_accounts (id, patient_id, name, email, status)
        VALUES ($1, $2, $3, $4, 'ACTIVE')
        ON CONFLICT (patient_id) DO UPDATE SET patient_id = EXCLUDED.patient_id
        RETURNING id, patient_id, status, created_at
        "#,
    )
    .bind(candidate)
    .bind(new.patient_id)
    .bind(&new.name)
    .bind(new.email.as_str())
    .fetch_one(pool)
    .await
    .context("failed to upsert billing account")?;
    let created = account.id == candidate;
    Ok((account, created))
}

#[tracing::instrument(skip(pool))]
pub async fn find_by_patient(pool: &PgPool, patient_id: Uuid) -> anyhow::Result<Option<Account>> {
    sqlx::query_as::<_, Account>(r#"SELECT id, patient_id, status, created_at FROM billing_accounts WHERE patient_id = $1"#)
        .bind(patient_id)
        .fetch_optional(pool)
        .await
        .context("failed to load billing account")
}

/// Closes the patient's account; true when an active account was closed now (false when it was
/// closed already or never existed).
#[tracing::instrument(skip(pool))]
pub async fn close_for_patient(pool: &PgPool, patient_id: Uuid) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE billing_accounts SET status = 'CLOSED', closed_at = now(), name = '', email = '' WHERE patient_id = $1 AND status = 'ACTIVE'",
    )
    .bind(patient_id)
    .execute(pool)
    .await
    .context("failed to close billing account")?;
    Ok(done.rows_affected() == 1)
}
