//! The `patient` topic consumer: decode, then record the event id and apply the event in ONE
//! statement (a redelivered event finds its id and changes nothing).
//!
//! - Patient events fetched together are recorded and applied by one statement, all or none.
//! - Records that cannot be decoded go to the dead-letter topic with the reason at once.
//! - Records the database rejects (a data or constraint error: the same record would fail every
//!   time) are tried `max_attempts` times, then dead-lettered; the next record then counts.
//! - Anything else (database down, pool exhausted) is retried in place, never skipped.
//! - Events of producers that set only fields 1–4 (the reference patient-service: no event id,
//!   no key) get an id derived from their position (topic, partition, offset), so a redelivery
//!   of the same record still counts once.

use std::sync::Arc;

use anyhow::Context;
use chrono::NaiveDate;
use common::kafka::{Batch, DeadLetters, RecordHandler};
use common::metrics::Registry;
use prost::Message as _;
use proto::events::PatientEvent;
use rdkafka::{message::OwnedMessage, Message};
use sqlx::PgPool;
use uuid::Uuid;

use crate::repo::{self, Applied, Event, Kind};

pub struct AnalyticsHandler {
    pub db: PgPool,
    /// Where undecodable and unappliable records go.
    pub dead_letters: DeadLetters,
    /// `analytics_events_total{result="applied|duplicate|dead_lettered"}`.
    pub metrics: Arc<Registry>,
    /// Records of this topic are appointment events ([`crate::appointments`]).
    pub appointment_topic: String,
    /// Whose months appointments are counted in.
    pub zone: common::zone::Zone,
}

impl RecordHandler for AnalyticsHandler {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        if record.topic() == self.appointment_topic {
            return match crate::appointments::parse(record.payload().unwrap_or_default(), self.zone) {
                Ok(Some(event)) => self.dead_letters.apply_or_dead_letter(record, || self.count_appointment(&event)).await,
                Ok(None) => Ok(()),
                Err(reason) => self.dead_letters.send(record, reason).await,
            };
        }
        let origin = Origin { topic: record.topic(), partition: record.partition(), offset: record.offset() };
        let event = match parse(record.payload().unwrap_or_default(), &origin) {
            Ok(event) => event,
            Err(reason) => return self.dead_letters.send(record, reason).await,
        };
        // Transient failures come back as errors: the consume loop retries this same record.
        self.dead_letters.apply_or_dead_letter(record, || self.apply(&event)).await
    }

    /// Patient events fetched together are applied by one statement. Anything else in the batch
    /// (an appointment event, a record that does not decode) sends it one by one, as does a
    /// failure: the statement applied none of them then.
    async fn handle_batch(&self, records: &[OwnedMessage]) -> anyhow::Result<Batch> {
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            if record.topic() == self.appointment_topic {
                return Ok(Batch::OneByOne);
            }
            let origin = Origin { topic: record.topic(), partition: record.partition(), offset: record.offset() };
            match parse(record.payload().unwrap_or_default(), &origin) {
                Ok(event) => events.push(event),
                Err(_) => return Ok(Batch::OneByOne),
            }
        }
        let outcomes = repo::apply_all(&self.db, &events).await.context("failed to apply events")?;
        for (event, applied) in events.iter().zip(outcomes) {
            self.count(event, applied);
        }
        Ok(Batch::Applied)
    }
}

/// Where a record sits on the broker.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Origin<'_> {
    /// The id of an event that carries none: the same for every delivery of this record.
    fn event_id(&self) -> Uuid {
        Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{}/{}/{}", self.topic, self.partition, self.offset).as_bytes())
    }
}

/// Namespace of ids derived from a record's position (a fixed, random UUID).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3f6c_1d2e_8a4b_4c7d_9e0f_5a6b_7c8d_9e0f);

impl AnalyticsHandler {
    #[tracing::instrument(skip_all, fields(event_id = %event.event_id, kind = %event.event_type))]
    async fn count_appointment(&self, event: &crate::appointments::Event) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        let fresh = crate::appointments::apply(&mut tx, event).await?;
        tx.commit().await.context("failed to commit event")?;
        self.metrics.inc(if fresh {
            "analytics_events_total{result=\"applied\"}"
        } else {
            "analytics_events_total{result=\"duplicate\"}"
        });
        Ok(())
    }

    async fn apply(&self, event: &Event) -> anyhow::Result<()> {
        let applied = repo::apply(&self.db, event).await.context("failed to apply event")?;
        self.count(event, applied);
        Ok(())
    }

    /// Metrics and log lines of an applied event.
    fn count(&self, event: &Event, applied: Applied) {
        let event_id = tracing::field::display(event.event_id);
        match applied {
            Applied::Applied => {
                self.metrics.inc("analytics_events_total{result=\"applied\"}");
                tracing::debug!(event_id, "event applied");
            }
            Applied::Stale => {
                self.metrics.inc("analytics_events_total{result=\"applied\"}");
                tracing::info!(event_id, sequence = event.sequence, "older than what was applied for this patient: state kept");
            }
            Applied::Duplicate => {
                self.metrics.inc("analytics_events_total{result=\"duplicate\"}");
                tracing::info!(event_id, "duplicate event ignored");
            }
        }
    }
}

/// A record's value as an [`Event`], or why it is not one. Without an `eventId` (fields 1–4
/// only) the id is derived from the record's position.
pub fn parse(payload: &[u8], origin: &Origin<'_>) -> Result<Event, &'static str> {
    let e = PatientEvent::decode(payload).map_err(|_| "value is not a protobuf PatientEvent")?;
    let kind = Kind::parse(&e.event_type).ok_or("unknown event_type")?;
    let event_id = match e.event_id.as_str() {
        "" => origin.event_id(),
        id => Uuid::parse_str(id).map_err(|_| "eventId is not a UUID")?,
    };
    let patient_id = Uuid::parse_str(&e.patient_id).map_err(|_| "patientId is missing or not a UUID")?;
    let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    Ok(Event {
        event_id,
        patient_id,
        kind,
        date_of_birth: date(&e.date_of_birth),
        registered_date: date(&e.registered_date),
        sequence: e.sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> PatientEvent {
        PatientEvent {
            patient_id: Uuid::new_v4().to_string(),
            event_type: kind.into(),
            event_id: Uuid::new_v4().to_string(),
            date_of_birth: "1990-01-02".into(),
            registered_date: "2024-05-06".into(),
            ..Default::default()
        }
    }

    const AT: Origin<'static> = Origin { topic: "patient", partition: 1, offset: 42 };

    #[test]
    fn decodes_a_complete_event() {
        let e = parse(&event("PATIENT_CREATED").encode_to_vec(), &AT).unwrap();
        assert_eq!(e.kind, Kind::Created);
        assert_eq!(e.registered_date, NaiveDate::from_ymd_opt(2024, 5, 6));
    }

    #[test]
    fn rejects_garbage_unknown_types_and_missing_ids() {
        assert!(parse(b"\xff\xff\xff not protobuf", &AT).is_err());
        assert_eq!(parse(&event("PATIENT_RENAMED").encode_to_vec(), &AT).unwrap_err(), "unknown event_type");
        let mut bad_id = event("PATIENT_CREATED");
        bad_id.event_id = "not-a-uuid".into();
        assert!(parse(&bad_id.encode_to_vec(), &AT).is_err());
        let mut no_patient = event("PATIENT_CREATED");
        no_patient.patient_id.clear();
        assert!(parse(&no_patient.encode_to_vec(), &AT).is_err());
    }

    #[test]
    fn an_event_without_id_gets_one_from_its_position() {
        // What the reference producer sends: fields 1-4 only.
        let reference = PatientEvent {
            patient_id: Uuid::new_v4().to_string(),
            name: "n".into(),
            email: "e@example.com".into(),
            event_type: "PATIENT_CREATED".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let first = parse(&reference, &AT).unwrap().event_id;
        assert_eq!(parse(&reference, &AT).unwrap().event_id, first, "a redelivery has the same id");
        let elsewhere = Origin { offset: 43, ..AT };
        assert_ne!(parse(&reference, &elsewhere).unwrap().event_id, first, "another record, another id");
    }

    #[test]
    fn dates_postgresql_cannot_store_still_decode() {
        // Decodable, so not dead-lettered at once: the database's refusal decides.
        let mut e = event("PATIENT_CREATED");
        e.date_of_birth = "-5000-01-01".into();
        assert!(parse(&e.encode_to_vec(), &AT).unwrap().date_of_birth.is_some());
    }
}
