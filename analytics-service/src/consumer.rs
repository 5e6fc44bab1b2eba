//! The `patient` topic consumer: decode, then record the event id and apply the event in ONE
//! transaction (a redelivered event finds its id and changes nothing).
//!
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
use common::kafka::RecordHandler;
use common::metrics::Registry;
use prost::Message as _;
use proto::events::PatientEvent;
use rdkafka::{
    message::{Header, OwnedHeaders, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    Message,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::repo::{self, Event, Kind};

pub struct AnalyticsHandler {
    pub db: PgPool,
    pub dead_letters: FutureProducer,
    pub dead_letter_topic: String,
    /// Tries of a record the database rejects before it is dead-lettered.
    pub max_attempts: u32,
    /// `analytics_events_total{result="applied|duplicate|dead_lettered"}`.
    pub metrics: Arc<Registry>,
}

impl RecordHandler for AnalyticsHandler {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        let origin = Origin { topic: record.topic(), partition: record.partition(), offset: record.offset() };
        let event = match parse(record.payload().unwrap_or_default(), &origin) {
            Ok(event) => event,
            Err(reason) => return self.dead_letter(record, reason).await,
        };
        let mut attempt = 1;
        loop {
            match self.apply(&event).await {
                Ok(()) => return Ok(()),
                Err(err) => match rejected(&err) {
                    Some(code) if attempt >= self.max_attempts => {
                        let reason = format!("the database rejects this event (SQLSTATE {code}) after {attempt} attempts");
                        return self.dead_letter(record, &reason).await;
                    }
                    Some(code) => {
                        tracing::warn!(attempt, sqlstate = %code, "the database rejected the event; trying again");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
                        attempt += 1;
                    }
                    // Transient: the consume loop retries this same record, nothing is skipped.
                    None => return Err(err),
                },
            }
        }
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

/// The SQLSTATE of an error the database will raise again for the same event: a data exception
/// (class 22, e.g. a date out of range) or an integrity constraint violation (class 23).
fn rejected(err: &anyhow::Error) -> Option<String> {
    let code = err.chain().find_map(|e| e.downcast_ref::<sqlx::Error>())?.as_database_error()?.code()?.into_owned();
    (code.starts_with("22") || code.starts_with("23")).then_some(code)
}

impl AnalyticsHandler {
    #[tracing::instrument(skip_all, fields(event_id = %event.event_id, patient_id = %event.patient_id, kind = event.kind.as_str()))]
    async fn apply(&self, event: &Event) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        let fresh = repo::record_event(&mut tx, event).await.context("failed to record event id")?;
        if fresh {
            repo::apply(&mut tx, event).await.context("failed to apply event")?;
        }
        tx.commit().await.context("failed to commit event")?;
        if fresh {
            self.metrics.inc("analytics_events_total{result=\"applied\"}");
            tracing::debug!("event applied");
        } else {
            self.metrics.inc("analytics_events_total{result=\"duplicate\"}");
            tracing::info!("duplicate event ignored");
        }
        Ok(())
    }

    /// Copies the record to the dead-letter topic with the reason and its origin as headers;
    /// `Ok` once the broker has it.
    #[tracing::instrument(skip_all, fields(partition = record.partition(), offset = record.offset()))]
    async fn dead_letter(&self, record: &OwnedMessage, reason: &str) -> anyhow::Result<()> {
        tracing::warn!(reason, "record sent to the dead-letter topic");
        let (partition, offset) = (record.partition().to_string(), record.offset().to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "dlt-reason", value: Some(reason) })
            .insert(Header { key: "dlt-original-topic", value: Some(record.topic()) })
            .insert(Header { key: "dlt-original-partition", value: Some(partition.as_str()) })
            .insert(Header { key: "dlt-original-offset", value: Some(offset.as_str()) });
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.dead_letter_topic).payload(record.payload().unwrap_or_default()).headers(headers);
        if let Some(key) = record.key() {
            out = out.key(key);
        }
        self.dead_letters
            .send(out, std::time::Duration::from_secs(10))
            .await
            .map_err(|(err, _)| anyhow::Error::new(err).context("dead-letter publish failed"))?;
        self.metrics.inc("analytics_events_total{result=\"dead_lettered\"}");
        Ok(())
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
