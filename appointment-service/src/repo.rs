//! The write side's statements: one small function per statement, each on the caller's
//! transaction (the handler owns begin/commit).

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::{Appointment, Booking, Slot, Status};

type Tx<'a> = Transaction<'a, Postgres>;

const COLUMNS: &str = "id, patient_id, clinician_id, starts_at, ends_at, status, version";

/// What the replica knows of a patient: None = never seen, Some(true) = deleted. The row is
/// share-locked until the booking commits, so a concurrent PATIENT_DELETED waits for the booking
/// and then cancels it too.
#[tracing::instrument(skip(tx))]
pub async fn patient_deleted(tx: &mut Tx<'_>, patient_id: Uuid) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar("SELECT deleted FROM patients WHERE id = $1 FOR SHARE").bind(patient_id).fetch_optional(&mut **tx).await
}

/// The advisory-lock space of clinicians' schedules (`pg_advisory_xact_lock(space, key)`), apart
/// from the one-key locks of the outbox relay.
const SCHEDULE_LOCKS: i32 = 0x5343_4844;

/// Takes the clinician's schedule until the transaction ends: the writes that put a slot under
/// the exclusion constraint (a booking, any change of a live appointment) queue here one at a
/// time. Without it, concurrent bookings of one slot each insert, then wait for the other's
/// uncommitted row in the constraint check: PostgreSQL breaks such a cycle by failing one with
/// a deadlock error (a 500 instead of the 409), after a second's wait in which the pool drains.
#[tracing::instrument(skip(tx))]
pub async fn lock_schedule(tx: &mut Tx<'_>, clinician_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
        .bind(SCHEDULE_LOCKS)
        .bind(clinician_id)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Inserts a BOOKED appointment (the exclusion constraint refuses a double booking).
#[tracing::instrument(skip(tx, booking), fields(clinician_id = %booking.clinician_id))]
pub async fn insert(tx: &mut Tx<'_>, id: Uuid, booking: &Booking) -> sqlx::Result<Appointment> {
    sqlx::query_as(&format!(
        "INSERT INTO appointments (id, patient_id, clinician_id, starts_at, ends_at) VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(booking.patient_id)
    .bind(booking.clinician_id)
    .bind(booking.slot.starts_at)
    .bind(booking.slot.ends_at)
    .fetch_one(&mut **tx)
    .await
}

/// The clinician's appointment (neither cancelled nor a no-show) overlapping `slot`, other than
/// `except`: the one a refused booking or reschedule conflicts with.
#[tracing::instrument(skip(db, slot))]
pub async fn conflicting(db: &PgPool, clinician_id: Uuid, slot: &Slot, except: Option<Uuid>) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        r#"
        SELECT id FROM appointments
        WHERE clinician_id = $1 AND status NOT IN ('CANCELLED', 'NO_SHOW')
          AND tstzrange(starts_at, ends_at) && tstzrange($2, $3)
          AND id IS DISTINCT FROM $4
        ORDER BY starts_at LIMIT 1
        "#,
    )
    .bind(clinician_id)
    .bind(slot.starts_at)
    .bind(slot.ends_at)
    .bind(except)
    .fetch_optional(db)
    .await
}

#[tracing::instrument(skip(db))]
pub async fn get(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Appointment>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM appointments WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// The appointment, locked for a change.
#[tracing::instrument(skip(tx))]
pub async fn lock(tx: &mut Tx<'_>, id: Uuid) -> sqlx::Result<Option<Appointment>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM appointments WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

/// Applies a status change (and a new slot, for a reschedule); the version goes up by one.
#[tracing::instrument(skip(tx, slot))]
pub async fn change(tx: &mut Tx<'_>, id: Uuid, status: Status, slot: Option<&Slot>) -> sqlx::Result<Appointment> {
    sqlx::query_as(&format!(
        r#"
        UPDATE appointments
        SET status = $2, starts_at = coalesce($3, starts_at), ends_at = coalesce($4, ends_at),
            version = version + 1, updated_at = now()
        WHERE id = $1
        RETURNING {COLUMNS}
        "#
    ))
    .bind(id)
    .bind(status.as_str())
    .bind(slot.map(|s| s.starts_at))
    .bind(slot.map(|s| s.ends_at))
    .fetch_one(&mut **tx)
    .await
}

/// Cancels the patient's appointments that are still BOOKED and have not started yet.
#[tracing::instrument(skip(tx))]
pub async fn cancel_future_of_patient(tx: &mut Tx<'_>, patient_id: Uuid, now: DateTime<Utc>) -> sqlx::Result<Vec<Appointment>> {
    sqlx::query_as(&format!(
        r#"
        UPDATE appointments SET status = 'CANCELLED', version = version + 1, updated_at = now()
        WHERE patient_id = $1 AND status = 'BOOKED' AND starts_at > $2
        RETURNING {COLUMNS}
        "#
    ))
    .bind(patient_id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await
}
