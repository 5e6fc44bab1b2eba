//! The durable mail queue and the contacts: one small function per statement.
//!
//! Mails are recorded in the consumer's transaction (the record's offset is stored only after it
//! commits), keyed by a `dedup_key` derived from the event, so a redelivered event records
//! nothing new. A reminder is a mail due before its appointment; a newer version of the
//! appointment replaces it, and a cancelled or finished appointment cancels it.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

type Tx<'a> = Transaction<'a, Postgres>;

/// What a mail is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Welcome,
    Booked,
    Rescheduled,
    Cancelled,
    Reminder,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Welcome => "WELCOME",
            Kind::Booked => "BOOKED",
            Kind::Rescheduled => "RESCHEDULED",
            Kind::Cancelled => "CANCELLED",
            Kind::Reminder => "REMINDER",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Kind::Welcome, Kind::Booked, Kind::Rescheduled, Kind::Cancelled, Kind::Reminder].into_iter().find(|k| k.as_str() == raw)
    }

    /// The templates' file name.
    pub fn file_stem(self) -> &'static str {
        match self {
            Kind::Welcome => "welcome",
            Kind::Booked => "booked",
            Kind::Rescheduled => "rescheduled",
            Kind::Cancelled => "cancelled",
            Kind::Reminder => "reminder",
        }
    }
}

/// A mail about an appointment.
#[derive(Debug, Clone, Copy)]
pub struct AboutAppointment {
    pub appointment_id: Uuid,
    pub version: i64,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// Since when events are mailed about: fixed at the first start (see the `mailing_since` table).
pub async fn mailing_since(db: &PgPool, backfill: chrono::Duration) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query("INSERT INTO mailing_since (since) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(Utc::now() - backfill)
        .execute(db)
        .await?;
    sqlx::query_scalar("SELECT since FROM mailing_since").fetch_one(db).await
}

/// Records a mail due at `due`, unless one with `dedup_key` exists; whether it was new.
pub async fn record(
    tx: &mut Tx<'_>,
    dedup_key: &str,
    kind: Kind,
    patient_id: Uuid,
    about: Option<AboutAppointment>,
    due: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        r#"
        INSERT INTO mails (id, dedup_key, kind, patient_id, appointment_id, appointment_version, starts_at, ends_at, next_attempt_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (dedup_key) DO NOTHING
        "#,
    )
    .bind(Uuid::new_v4())
    .bind(dedup_key)
    .bind(kind.as_str())
    .bind(patient_id)
    .bind(about.map(|a| a.appointment_id))
    .bind(about.map(|a| a.version))
    .bind(about.map(|a| a.starts_at))
    .bind(about.map(|a| a.ends_at))
    .bind(due)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Where a reminder waits for the consumer: until it has read `partition` up to `through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub partition: i32,
    pub through: i64,
}

/// The most a hold keeps a reminder back. Past it the reminder goes even if the consumer has not
/// read that far: stuck for longer, or waiting for an offset that is never delivered (another
/// producer's transaction marker, say).
pub const HOLD_LIMIT_MINUTES: i64 = 30;

/// The reminder of `about` (due `due`, held by `hold`), replacing a pending reminder of an older
/// version; an event older than what this appointment's mails already describe changes nothing.
pub async fn schedule_reminder(
    tx: &mut Tx<'_>,
    patient_id: Uuid,
    about: AboutAppointment,
    due: DateTime<Utc>,
    hold: Option<Hold>,
) -> sqlx::Result<()> {
    if newer_known(tx, about.appointment_id, about.version).await? {
        return Ok(());
    }
    cancel_reminders(tx, about.appointment_id, about.version).await?;
    let key = format!("reminder:{}:{}", about.appointment_id, about.version);
    let new = record(tx, &key, Kind::Reminder, patient_id, Some(about), due).await?;
    if let Some(hold) = hold.filter(|_| new) {
        sqlx::query("UPDATE mails SET held_partition = $2, held_through = $3 WHERE dedup_key = $1")
            .bind(&key)
            .bind(hold.partition)
            .bind(hold.through)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The consumer has read `partition` up to `offset`: the reminders that waited for it may go.
pub async fn release_holds(db: &PgPool, partition: i32, offset: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE mails SET held_partition = NULL, held_through = NULL WHERE held_partition = $1 AND held_through <= $2",
    )
    .bind(partition)
    .bind(offset)
    .execute(db)
    .await?
    .rows_affected())
}

/// Whether a mail describes a version of the appointment newer than `version`.
pub async fn newer_known(tx: &mut Tx<'_>, appointment_id: Uuid, version: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM mails WHERE appointment_id = $1 AND appointment_version > $2)")
        .bind(appointment_id)
        .bind(version)
        .fetch_one(&mut **tx)
        .await
}

/// Cancels the appointment's pending reminders of versions before `version`.
pub async fn cancel_reminders(tx: &mut Tx<'_>, appointment_id: Uuid, version: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        r#"
        UPDATE mails SET status = 'CANCELLED'
        WHERE appointment_id = $1 AND kind = 'REMINDER' AND status IN ('PENDING', 'SENDING') AND appointment_version < $2
        "#,
    )
    .bind(appointment_id)
    .bind(version)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Stores a patient's contact details unless a newer version is known (sequence 0: a producer
/// without sequences, applied as it comes); a deleted patient stays deleted.
pub async fn upsert_contact(tx: &mut Tx<'_>, patient_id: Uuid, name: &str, email: &str, sequence: i64) -> sqlx::Result<()> {
    sqlx::query(
        r#"
        INSERT INTO contacts (patient_id, name, email, sequence) VALUES ($1, $2, $3, $4)
        ON CONFLICT (patient_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email, sequence = EXCLUDED.sequence,
                                               updated_at = now()
        WHERE NOT contacts.deleted AND (contacts.sequence < EXCLUDED.sequence OR EXCLUDED.sequence = 0)
        "#,
    )
    .bind(patient_id)
    .bind(name)
    .bind(email)
    .bind(sequence)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// A deleted patient: name and email scrubbed, their unsent mails cancelled.
pub async fn forget_contact(tx: &mut Tx<'_>, patient_id: Uuid, sequence: i64) -> sqlx::Result<u64> {
    sqlx::query(
        r#"
        INSERT INTO contacts (patient_id, name, email, sequence, deleted) VALUES ($1, '', '', $2, true)
        ON CONFLICT (patient_id) DO UPDATE SET name = '', email = '', deleted = true,
                                               sequence = greatest(contacts.sequence, EXCLUDED.sequence), updated_at = now()
        "#,
    )
    .bind(patient_id)
    .bind(sequence)
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query("UPDATE mails SET status = 'CANCELLED' WHERE patient_id = $1 AND status IN ('PENDING', 'SENDING')")
        .bind(patient_id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// A mail claimed for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub kind: String,
    pub patient_id: Uuid,
    pub appointment_id: Option<Uuid>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` due mails for `lease`: marked SENDING, so no other sender takes them
/// meanwhile; a mail whose sender died is due again when the lease ends. A held reminder is not
/// due (see [`Hold`]). A claim is the pair
/// (id, attempts): a later claim of the same mail has a higher attempt number.
#[tracing::instrument(skip(db))]
pub async fn claim_due(db: &PgPool, limit: i64, lease: std::time::Duration) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(
        r#"
        UPDATE mails SET status = 'SENDING', attempts = attempts + 1,
                         next_attempt_at = now() + make_interval(secs => $2)
        WHERE id IN (SELECT id FROM mails
                     WHERE status IN ('PENDING', 'SENDING') AND next_attempt_at <= now()
                       AND (held_through IS NULL OR created_at < now() - make_interval(mins => $3))
                     ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING id, kind, patient_id, appointment_id, starts_at, ends_at, attempts, created_at
        "#,
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(HOLD_LIMIT_MINUTES as i32)
    .fetch_all(db)
    .await
}

/// Renews this sender's claim on a mail just before sending it; false when the mail is no longer
/// its to send (cancelled meanwhile, or claimed again by another sender after the lease ended).
#[tracing::instrument(skip(db))]
pub async fn renew(db: &PgPool, id: Uuid, attempt: i32, lease: std::time::Duration) -> sqlx::Result<bool> {
    let renewed = sqlx::query(
        "UPDATE mails SET next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1 AND status = 'SENDING' AND attempts = $2",
    )
    .bind(id)
    .bind(attempt)
    .bind(lease.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected();
    Ok(renewed == 1)
}

/// The contact of a patient: None when unknown yet, `Some(None)` when deleted.
#[tracing::instrument(skip(db))]
pub async fn contact(db: &PgPool, patient_id: Uuid) -> sqlx::Result<Option<Option<(String, String)>>> {
    let row: Option<(String, String, bool)> = sqlx::query_as("SELECT name, email, deleted FROM contacts WHERE patient_id = $1")
        .bind(patient_id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|(name, email, deleted)| (!deleted).then_some((name, email))))
}

/// The end of a claimed mail's attempt.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Sent,
    /// Try again at this time (`error` names the class of failure, never an address).
    Retry {
        at: DateTime<Utc>,
        error: &'static str,
    },
    /// Given up (`error`: why).
    Failed(&'static str),
    Cancelled,
}

/// Records how attempt `attempt` ended, if the mail is still that claim's (SENDING, same attempt).
#[tracing::instrument(skip(db))]
pub async fn finish(db: &PgPool, id: Uuid, attempt: i32, outcome: Outcome) -> sqlx::Result<()> {
    let (status, at, error) = match outcome {
        Outcome::Sent => ("SENT", None, None),
        Outcome::Retry { at, error } => ("PENDING", Some(at), Some(error)),
        Outcome::Failed(error) => ("FAILED", None, Some(error)),
        Outcome::Cancelled => ("CANCELLED", None, None),
    };
    sqlx::query(
        r#"
        UPDATE mails SET status = $2, next_attempt_at = coalesce($3, next_attempt_at), last_error = $4,
                         sent_at = CASE WHEN $2 = 'SENT' THEN now() ELSE sent_at END
        WHERE id = $1 AND status = 'SENDING' AND attempts = $5
        "#,
    )
    .bind(id)
    .bind(status)
    .bind(at)
    .bind(error)
    .bind(attempt)
    .execute(db)
    .await
    .map(|_| ())
}
