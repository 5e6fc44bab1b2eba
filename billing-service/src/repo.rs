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

/// Creates the patient's account as PENDING, or returns the one that exists: a single statement,
/// so concurrent repeats for one patient all get the same row (the unique index serialises them).
/// A VOIDED account (its patient never appeared in time) is opened again as PENDING with the
/// request's name and email: a retried create of that patient id is a new attempt.
#[tracing::instrument(skip(pool, new), fields(patient_id = %new.patient_id))]
pub async fn create_or_get(pool: &PgPool, new: &NewAccount) -> anyhow::Result<(Account, bool)> {
    let candidate = Uuid::new_v4();
    let account = sqlx::query_as::<_, Account>(
        r#"
        INSERT INTO billing_accounts (id, patient_id, name, email, status, pending_since)
        VALUES ($1, $2, $3, $4, 'PENDING', now())
        ON CONFLICT (patient_id) DO UPDATE SET
            status        = CASE WHEN billing_accounts.status = 'VOIDED' THEN 'PENDING' ELSE billing_accounts.status END,
            name          = CASE WHEN billing_accounts.status = 'VOIDED' THEN EXCLUDED.name ELSE billing_accounts.name END,
            email         = CASE WHEN billing_accounts.status = 'VOIDED' THEN EXCLUDED.email ELSE billing_accounts.email END,
            pending_since = CASE WHEN billing_accounts.status = 'VOIDED' THEN now() ELSE billing_accounts.pending_since END,
            voided_at     = CASE WHEN billing_accounts.status = 'VOIDED' THEN NULL ELSE billing_accounts.voided_at END
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

/// What an event of an existing patient did to its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// A PENDING account became ACTIVE.
    Activated,
    /// A VOIDED account (voided before the event arrived) became ACTIVE again, with the event's
    /// name and email.
    Revived,
    /// No account existed (e.g. billing's data was restored from an older backup): opened ACTIVE
    /// from the event.
    Opened,
    /// Already ACTIVE or CLOSED: nothing changed.
    Unchanged,
}

/// The patient exists (its event was committed by patient-service): its account becomes ACTIVE.
/// One statement, so it never races the sweeper into a wrong state: whichever commits second sees
/// the other's row. CLOSED is final.
#[tracing::instrument(skip(pool, name, email))]
pub async fn activate_for_patient(pool: &PgPool, patient_id: Uuid, name: &str, email: &str) -> anyhow::Result<Activation> {
    let candidate = Uuid::new_v4();
    let row: Option<(Uuid, bool)> = sqlx::query_as(
        r#"
        WITH before AS (SELECT status FROM billing_accounts WHERE patient_id = $2)
        INSERT INTO billing_accounts (id, patient_id, name, email, status, activated_at)
        VALUES ($1, $2, $3, $4, 'ACTIVE', now())
        ON CONFLICT (patient_id) DO UPDATE SET
            status       = 'ACTIVE',
            activated_at = now(),
            voided_at    = NULL,
            name         = CASE WHEN billing_accounts.status = 'VOIDED' THEN EXCLUDED.name ELSE billing_accounts.name END,
            email        = CASE WHEN billing_accounts.status = 'VOIDED' THEN EXCLUDED.email ELSE billing_accounts.email END
        WHERE billing_accounts.status IN ('PENDING', 'VOIDED')
        RETURNING id, coalesce((SELECT status FROM before) = 'VOIDED', false)
        "#,
    )
    .bind(candidate)
    .bind(patient_id)
    .bind(name)
    .bind(email)
    .fetch_optional(pool)
    .await
    .context("failed to activate billing account")?;
    Ok(match row {
        None => Activation::Unchanged,
        Some((id, _)) if id == candidate => Activation::Opened,
        Some((_, true)) => Activation::Revived,
        Some((_, false)) => Activation::Activated,
    })
}

/// Voids every account PENDING for longer than `window`: its patient was never committed, so
/// nobody will ever bill it, and its name and email go. Returns how many were voided.
#[tracing::instrument(skip(pool))]
pub async fn void_stale_pending(pool: &PgPool, window: std::time::Duration) -> anyhow::Result<u64> {
    let done = sqlx::query(
        r#"
        UPDATE billing_accounts SET status = 'VOIDED', voided_at = now(), name = '', email = ''
        WHERE status = 'PENDING' AND pending_since < now() - make_interval(secs => $1)
        "#,
    )
    .bind(window.as_secs_f64())
    .execute(pool)
    .await
    .context("failed to void stale pending accounts")?;
    Ok(done.rows_affected())
}

#[tracing::instrument(skip(pool))]
pub async fn find_by_patient(pool: &PgPool, patient_id: Uuid) -> anyhow::Result<Option<Account>> {
    sqlx::query_as::<_, Account>(r#"SELECT id, patient_id, status, created_at FROM billing_accounts WHERE patient_id = $1"#)
        .bind(patient_id)
        .fetch_optional(pool)
        .await
        .context("failed to load billing account")
}

/// Closes the patient's account (whatever its state but CLOSED) and scrubs its name and email;
/// true when it was closed now (false when it was closed already or never existed).
#[tracing::instrument(skip(pool))]
pub async fn close_for_patient(pool: &PgPool, patient_id: Uuid) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE billing_accounts SET status = 'CLOSED', closed_at = now(), name = '', email = '' WHERE patient_id = $1 AND status <> 'CLOSED'",
    )
    .bind(patient_id)
    .execute(pool)
    .await
    .context("failed to close billing account")?;
    Ok(done.rows_affected() == 1)
}
