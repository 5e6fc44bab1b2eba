//! The consumer of the `patient` and `appointment` topics (group `notification-service`): it
//! keeps the patients' contact details and records the mails each event calls for, in ONE
//! transaction per record. It never sends: the sender works the queue (record-then-send).
//!
//! - PATIENT_CREATED: a welcome mail (one per patient). PATIENT_UPDATED: new contact details.
//!   PATIENT_DELETED: contact scrubbed, unsent mails cancelled.
//! - APPOINTMENT_BOOKED / _RESCHEDULED / _CANCELLED: a confirmation, keyed by the event id; a
//!   booked appointment gets a reminder `REMINDER_BEFORE_SECS` ahead (at once when that is past,
//!   none once it started), replaced by a reschedule and cancelled by any other change.
//!   A cancellation because the patient was deleted mails nobody.
//! - A reminder waits for the later events of its appointment that are already written:
//!   - recorded while its partition holds records this consumer has not read yet (it is catching
//!     up on a backlog), it is held until the consumer has read as far as the partition reached
//!     then (for at most `HOLD_LIMIT_MINUTES`, 30);
//!   - recorded from an old event while the producer side is catching up (its relay publishing
//!     a backlog after an outage), it waits a minute, when the start leaves room, for the events
//!     still to be published.
//! - Events from before the service's first start (less `MAIL_BACKFILL_SECS`: a new consumer
//!   group replays history) keep contacts and reminders current but mail nothing else; a patient
//!   event without `occurredAt` is dated by its record's timestamp.
//! - Undecodable records go to their topic's dead-letter topic; a redelivered record records
//!   nothing new.

use anyhow::Context;
use chrono::{DateTime, Utc};
use common::kafka::{DeadLetters, PartitionEnds, RecordHandler};
use prost::Message as _;
use proto::{appointment_event_type as appointment, appointments::AppointmentEvent, event_type, events::PatientEvent};
use rdkafka::{message::OwnedMessage, Message};
use sqlx::PgPool;
use uuid::Uuid;

use crate::mails::{self, AboutAppointment, Hold, Kind};

pub struct Notifier {
    pub db: PgPool,
    pub dead_letters: DeadLetters,
    pub appointment_topic: String,
    /// Where the appointment topic's partitions end, to hold reminders during a backlog.
    pub partition_ends: PartitionEnds,
    pub reminder_before: chrono::Duration,
    /// Events from before this mail nothing (a replay of history); see `MAIL_BACKFILL_SECS`.
    pub mailing_since: DateTime<Utc>,
}

/// A patient event, as far as mails care (no `Debug`: it holds a name and an email).
enum PatientChange {
    /// `occurred_at`: from the event, else when its record was written (a producer that sets
    /// fields 1–4 only); None only when neither says (taken as new).
    Known {
        patient_id: Uuid,
        name: String,
        email: String,
        sequence: i64,
        created: bool,
        occurred_at: Option<DateTime<Utc>>,
    },
    Deleted {
        patient_id: Uuid,
        sequence: i64,
    },
}

/// When a record was written (its Kafka timestamp), for events that do not say when they happened.
fn written_at(record: &OwnedMessage) -> Option<DateTime<Utc>> {
    record.timestamp().to_millis().and_then(DateTime::from_timestamp_millis)
}

fn parse_patient(payload: &[u8], written_at: Option<DateTime<Utc>>) -> Result<PatientChange, &'static str> {
    let e = PatientEvent::decode(payload).map_err(|_| "not a PatientEvent")?;
    let patient_id = common::extract::canonical_uuid(&e.patient_id).ok_or("patientId is not a UUID")?;
    // Past i64 no producer counts: taken as unknown (0), as billing and analytics do, so such an
    // event (a deletion above all) is applied instead of dead-lettered.
    let sequence = i64::try_from(e.sequence).unwrap_or(0);
    Ok(match e.event_type.as_str() {
        event_type::PATIENT_CREATED | event_type::PATIENT_UPDATED => PatientChange::Known {
            patient_id,
            name: e.name,
            email: e.email,
            sequence,
            created: e.event_type == event_type::PATIENT_CREATED,
            occurred_at: DateTime::parse_from_rfc3339(&e.occurred_at).ok().map(|t| t.with_timezone(&Utc)).or(written_at),
        },
        event_type::PATIENT_DELETED => PatientChange::Deleted { patient_id, sequence },
        _ => return Err("unknown event_type"),
    })
}

/// An appointment event, as far as mails care.
#[derive(Debug)]
struct AppointmentChange {
    event_id: Uuid,
    event_type: String,
    patient_id: Uuid,
    about: AboutAppointment,
    status: String,
    cancel_reason: String,
    occurred_at: DateTime<Utc>,
}

fn parse_appointment(payload: &[u8]) -> Result<AppointmentChange, &'static str> {
    let e = AppointmentEvent::decode(payload).map_err(|_| "not an AppointmentEvent")?;
    let id = |raw: &str| common::extract::canonical_uuid(raw).ok_or("an id is not a UUID");
    let time = |raw: &str| DateTime::parse_from_rfc3339(raw).map(|t| t.with_timezone(&Utc)).map_err(|_| "a time is not RFC 3339");
    Ok(AppointmentChange {
        event_id: id(&e.event_id)?,
        patient_id: id(&e.patient_id)?,
        about: AboutAppointment {
            appointment_id: id(&e.appointment_id)?,
            version: i64::try_from(e.sequence).map_err(|_| "sequence out of range")?,
            starts_at: time(&e.starts_at)?,
            ends_at: time(&e.ends_at)?,
        },
        event_type: e.event_type,
        status: e.status,
        cancel_reason: e.cancel_reason,
        occurred_at: time(&e.occurred_at)?,
    })
}

impl RecordHandler for Notifier {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        let payload = record.payload().unwrap_or_default();
        if record.topic() == self.appointment_topic {
            match parse_appointment(payload) {
                Ok(change) => self.dead_letters.apply_or_dead_letter(record, || self.on_appointment(&change, record)).await,
                Err(reason) => self.dead_letters.send(record, reason).await,
            }?;
            // Read this far (applied or dead-lettered): the reminders held for it may go. A
            // failure here redelivers the record, which records nothing twice.
            let released = mails::release_holds(&self.db, record.partition(), record.offset())
                .await
                .context("failed to release held reminders")?;
            if released > 0 {
                tracing::info!(released, partition = record.partition(), "caught up: held reminders released");
            }
            Ok(())
        } else {
            match parse_patient(payload, written_at(record)) {
                Ok(change) => self.dead_letters.apply_or_dead_letter(record, || self.on_patient(&change)).await,
                Err(reason) => self.dead_letters.send(record, reason).await,
            }
        }
    }
}

/// An event older than this when consumed means the consumer is catching up on a backlog.
const BEHIND: chrono::Duration = chrono::Duration::seconds(10);
/// How long a reminder found due from an old event waits, so that later events of its
/// appointment still being published are consumed first.
const CATCH_UP_SETTLE: chrono::Duration = chrono::Duration::seconds(60);

impl Notifier {
    /// Whether an event is recent enough to mail about.
    fn recent(&self, occurred_at: DateTime<Utc>) -> bool {
        occurred_at >= self.mailing_since
    }

    #[tracing::instrument(skip_all)]
    async fn on_patient(&self, change: &PatientChange) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        match change {
            PatientChange::Known { patient_id, name, email, sequence, created, occurred_at } => {
                mails::upsert_contact(&mut tx, *patient_id, name, email, *sequence)
                    .await
                    .context("failed to store the contact")?;
                if *created && occurred_at.is_none_or(|at| self.recent(at)) {
                    let key = format!("welcome:{patient_id}");
                    mails::record(&mut tx, &key, Kind::Welcome, *patient_id, None, Utc::now())
                        .await
                        .context("failed to record the welcome mail")?;
                }
            }
            PatientChange::Deleted { patient_id, sequence } => {
                let cancelled =
                    mails::forget_contact(&mut tx, *patient_id, *sequence).await.context("failed to forget the contact")?;
                tracing::info!(%patient_id, cancelled, "patient deleted: contact scrubbed, unsent mails cancelled");
            }
        }
        tx.commit().await.context("failed to commit")?;
        Ok(())
    }

    /// The hold of a reminder recorded from `record`: None when nothing was written after it.
    async fn hold_for(&self, record: &OwnedMessage) -> anyhow::Result<Option<Hold>> {
        let end = self.partition_ends.last_offset(record.topic(), record.partition()).await?;
        Ok(end.filter(|end| *end > record.offset()).map(|through| Hold { partition: record.partition(), through }))
    }

    #[tracing::instrument(skip_all, fields(appointment_id = %change.about.appointment_id, version = change.about.version, event_type = %change.event_type))]
    async fn on_appointment(&self, change: &AppointmentChange, record: &OwnedMessage) -> anyhow::Result<()> {
        let now = Utc::now();
        let about = change.about;
        let reminded = change.status == "BOOKED" && about.starts_at > now;
        // Asked before the transaction: it holds no connection while the broker answers.
        let hold = if reminded { self.hold_for(record).await? } else { None };
        if let Some(hold) = hold {
            tracing::info!(partition = hold.partition, through = hold.through, "reminder held until the backlog is read");
        }
        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        let confirmation = match change.event_type.as_str() {
            appointment::BOOKED => Some(Kind::Booked),
            appointment::RESCHEDULED => Some(Kind::Rescheduled),
            appointment::CANCELLED if change.cancel_reason != proto::cancel_reason::PATIENT_DELETED => Some(Kind::Cancelled),
            _ => None,
        }
        .filter(|_| self.recent(change.occurred_at));
        if let Some(kind) = confirmation {
            let key = format!("event:{}", change.event_id);
            mails::record(&mut tx, &key, kind, change.patient_id, Some(about), now).await.context("failed to record the mail")?;
        }
        if reminded {
            let mut due = (about.starts_at - self.reminder_before).max(now);
            if now - change.occurred_at > BEHIND && about.starts_at - now > CATCH_UP_SETTLE * 2 {
                // An old event at the end of what is written: the producer side may be catching
                // up (its relay publishing a backlog after an outage), a cancellation or a move
                // of this appointment not published yet. A reminder due now waits for it when
                // the start leaves room; closer to the start, it goes now. (Event age is read
                // from the producer's clock: skew shifts it.)
                due = due.max(now + CATCH_UP_SETTLE);
            }
            mails::schedule_reminder(&mut tx, change.patient_id, about, due, hold)
                .await
                .context("failed to schedule the reminder")?;
        } else {
            // Cancelled, checked in, finished, or already started: no reminder (any more).
            mails::cancel_reminders(&mut tx, about.appointment_id, about.version + 1)
                .await
                .context("failed to cancel reminders")?;
        }
        tx.commit().await.context("failed to commit")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_deletion_with_a_sequence_past_any_count_still_forgets_the_contact() {
        let event = PatientEvent {
            patient_id: uuid::Uuid::new_v4().to_string(),
            event_type: event_type::PATIENT_DELETED.into(),
            sequence: u64::MAX,
            ..Default::default()
        };
        let change = parse_patient(&event.encode_to_vec(), None).expect("not dead-lettered");
        assert!(matches!(change, PatientChange::Deleted { sequence: 0, .. }));
    }
}
