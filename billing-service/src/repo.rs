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
    .bind(new.name.as_str())
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
    /// Already ACTIVE: its name and email replaced by those of a later change of the patient.
    Refreshed,
    /// Already ACTIVE (and the event no later change than its contact's) or CLOSED: nothing
    /// changed.
    Unchanged,
}

/// What a patient event did to the patient's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A created or updated patient: its account's activation.
    Activation(Activation),
    /// A deleted patient: true when its account was closed now (false when it was closed
    /// already or never existed).
    Closed(bool),
    /// An event type billing has nothing to do with.
    Ignored,
}

impl Effect {
    fn parse(outcome: &str) -> anyhow::Result<Self> {
        Ok(match outcome {
            "activated" => Effect::Activation(Activation::Activated),
            "revived" => Effect::Activation(Activation::Revived),
            "opened" => Effect::Activation(Activation::Opened),
            "refreshed" => Effect::Activation(Activation::Refreshed),
            "unchanged" => Effect::Activation(Activation::Unchanged),
            "closed" => Effect::Closed(true),
            "not_closed" => Effect::Closed(false),
            "ignored" => Effect::Ignored,
            other => anyhow::bail!("billing's database answered the outcome {other:?}"),
        })
    }
}

/// A patient event, as billing applies it.
#[derive(Debug, Clone, Copy)]
pub struct PatientChange<'a> {
    pub patient_id: Uuid,
    pub event_type: &'a str,
    pub name: &'a str,
    pub email: &'a str,
    /// The patient's change number (`sequence`; 0 when the producer did not set it): a contact
    /// replaces the account's only when it comes from a later change.
    pub sequence: i64,
}

/// Applies patient events in order, in ONE statement (the migrations' `apply_patient_events`):
/// all of them or none. A created or updated patient's account becomes ACTIVE (`activate_account`:
/// one statement per event, so it never races the sweeper into a wrong state; CLOSED is final)
/// and takes the event's name and email when the event is a later change than its contact's;
/// a deleted patient's account is closed and scrubbed (`close_account`). Each event's effect, in
/// the same order.
#[tracing::instrument(skip_all, fields(events = changes.len()))]
pub async fn apply_events(pool: &PgPool, changes: &[PatientChange<'_>]) -> anyhow::Result<Vec<Effect>> {
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT apply_patient_events($1, $2, $3, $4, $5)")
        .bind(changes.iter().map(|c| c.patient_id).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.event_type).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.name).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.email).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.sequence).collect::<Vec<_>>())
        .fetch_one(pool)
        .await
        .context("failed to apply patient events to billing accounts")?;
    anyhow::ensure!(
        outcomes.len() == changes.len(),
        "apply_patient_events answered {} outcomes for {} events",
        outcomes.len(),
        changes.len()
    );
    outcomes.iter().map(|o| Effect::parse(o)).collect()
}

/// The patient exists (its event was committed by patient-service): its account becomes ACTIVE
/// (the migrations' `activate_account`).
#[tracing::instrument(skip(pool, name, email))]
pub async fn activate_for_patient(pool: &PgPool, patient_id: Uuid, name: &str, email: &str) -> anyhow::Result<Activation> {
    let outcome: String = sqlx::query_scalar("SELECT activate_account($1, $2, $3)")
        .bind(patient_id)
        .bind(name)
        .bind(email)
        .fetch_one(pool)
        .await
        .context("failed to activate billing account")?;
    match Effect::parse(&outcome)? {
        Effect::Activation(how) => Ok(how),
        other => anyhow::bail!("activate_account answered {other:?}"),
    }
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
    sqlx::query_scalar("SELECT close_account($1)")
        .bind(patient_id)
        .fetch_one(pool)
        .await
        .context("failed to close billing account")
}
