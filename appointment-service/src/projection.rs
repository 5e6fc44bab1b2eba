//! The read side: a projection of the `appointment` topic (group `appointment-projection`) into
//! the `schedule` table, and the queries over it.
//!
//! - Every event carries the appointment's full state after the change and its version, so the
//!   projection keeps the newest snapshot per appointment: an older or repeated event changes
//!   nothing (effectively once, in any order).
//! - `projection_position` counts applied events and remembers the newest event's time: the
//!   freshness every query reports.
//! - A client that just sent a command can wait for it: the command answered with a consistency
//!   token (`<appointment id>:<version>`), and a query given that token waits (bounded) until the
//!   projection holds that version of that appointment.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use common::kafka::{DeadLetters, RecordHandler};
use prost::Message as _;
use proto::appointments::AppointmentEvent;
use rdkafka::{message::OwnedMessage, Message};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Appointment, Status};

pub struct Projection {
    pub db: PgPool,
    pub dead_letters: DeadLetters,
}

fn parse(payload: &[u8]) -> Result<(Appointment, DateTime<Utc>), &'static str> {
    let e = AppointmentEvent::decode(payload).map_err(|_| "not an AppointmentEvent")?;
    let id = |raw: &str| common::extract::canonical_uuid(raw).ok_or("an id is not a UUID");
    let time = |raw: &str| DateTime::parse_from_rfc3339(raw).map(|t| t.with_timezone(&Utc)).map_err(|_| "a time is not RFC 3339");
    Status::parse(&e.status).ok_or("unknown status")?;
    let entry = Appointment {
        id: id(&e.appointment_id)?,
        patient_id: id(&e.patient_id)?,
        clinician_id: id(&e.clinician_id)?,
        starts_at: time(&e.starts_at)?,
        ends_at: time(&e.ends_at)?,
        status: e.status,
        version: i64::try_from(e.sequence).map_err(|_| "sequence out of range")?,
    };
    Ok((entry, time(&e.occurred_at)?))
}

impl RecordHandler for Projection {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        let (entry, occurred_at) = match parse(record.payload().unwrap_or_default()) {
            Ok(parsed) => parsed,
            Err(reason) => return self.dead_letters.send(record, reason).await,
        };
        self.dead_letters.apply_or_dead_letter(record, || self.apply(&entry, occurred_at)).await
    }
}

impl Projection {
    #[tracing::instrument(skip_all, fields(appointment_id = %entry.id, version = entry.version))]
    async fn apply(&self, entry: &Appointment, occurred_at: DateTime<Utc>) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        let applied = sqlx::query(
            r#"
            INSERT INTO schedule (appointment_id, patient_id, clinician_id, starts_at, ends_at, status, version, changed_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (appointment_id) DO UPDATE
            SET starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at, status = EXCLUDED.status,
                version = EXCLUDED.version, changed_at = EXCLUDED.changed_at
            WHERE schedule.version < EXCLUDED.version
            "#,
        )
        .bind(entry.id)
        .bind(entry.patient_id)
        .bind(entry.clinician_id)
        .bind(entry.starts_at)
        .bind(entry.ends_at)
        .bind(&entry.status)
        .bind(entry.version)
        .bind(occurred_at)
        .execute(&mut *tx)
        .await
        .context("failed to apply the event")?
        .rows_affected();
        if applied == 1 {
            sqlx::query("UPDATE projection_position SET applied = applied + 1, last_event_at = greatest(last_event_at, $1)")
                .bind(occurred_at)
                .execute(&mut *tx)
                .await
                .context("failed to advance the position")?;
        } else {
            tracing::debug!("stale or repeated event ignored");
        }
        tx.commit().await.context("failed to commit the projection")?;
        Ok(())
    }
}

/// How fresh the projection is.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Position {
    pub applied: i64,
    pub last_event_at: Option<DateTime<Utc>>,
}

pub async fn position(db: &PgPool) -> sqlx::Result<Position> {
    sqlx::query_as("SELECT applied, last_event_at FROM projection_position").fetch_one(db).await
}

/// A command's consistency token: the appointment and the version the command produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub appointment_id: Uuid,
    pub version: i64,
}

impl Token {
    pub fn parse(raw: &str) -> Option<Self> {
        let (id, version) = raw.trim().split_once(':')?;
        let version: i64 = version.parse().ok().filter(|v| *v >= 1)?;
        Some(Self { appointment_id: common::extract::canonical_uuid(id)?, version })
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.appointment_id, self.version)
    }
}

/// Waits until the projection holds `token`'s version (or a newer one); false after `limit`.
pub async fn wait_for(db: &PgPool, token: Token, limit: Duration) -> sqlx::Result<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM schedule WHERE appointment_id = $1")
            .bind(token.appointment_id)
            .fetch_optional(db)
            .await?;
        if version.is_some_and(|v| v >= token.version) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A page of entries and the total.
pub struct Page {
    pub entries: Vec<Appointment>,
    pub total: i64,
}

const ENTRY_COLUMNS: &str = "appointment_id AS id, patient_id, clinician_id, starts_at, ends_at, status, version";

/// The clinician's appointments overlapping `[from, to)`, every status, by start.
pub async fn clinician_schedule(
    db: &PgPool,
    clinician_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    (page, size): (i64, i64),
) -> sqlx::Result<Page> {
    let filter = "clinician_id = $1 AND starts_at < $3 AND ends_at > $2";
    let entries = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM schedule WHERE {filter} ORDER BY starts_at, appointment_id LIMIT $4 OFFSET $5"
    ))
    .bind(clinician_id)
    .bind(from)
    .bind(to)
    .bind(size)
    .bind(page.saturating_mul(size))
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar(&format!("SELECT count(*) FROM schedule WHERE {filter}"))
        .bind(clinician_id)
        .bind(from)
        .bind(to)
        .fetch_one(db)
        .await?;
    Ok(Page { entries, total })
}

/// The patient's appointments that have not ended and are still on (BOOKED or CHECKED_IN).
pub async fn patient_upcoming(db: &PgPool, patient_id: Uuid, now: DateTime<Utc>, (page, size): (i64, i64)) -> sqlx::Result<Page> {
    let filter = "patient_id = $1 AND ends_at > $2 AND status IN ('BOOKED', 'CHECKED_IN')";
    let entries = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM schedule WHERE {filter} ORDER BY starts_at, appointment_id LIMIT $3 OFFSET $4"
    ))
    .bind(patient_id)
    .bind(now)
    .bind(size)
    .bind(page.saturating_mul(size))
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar(&format!("SELECT count(*) FROM schedule WHERE {filter}"))
        .bind(patient_id)
        .bind(now)
        .fetch_one(db)
        .await?;
    Ok(Page { entries, total })
}
