//! The `patient` topic consumer: decode, then record the event id and apply the event in ONE
//! transaction (a redelivered event finds its id and changes nothing); records that cannot be
//! decoded go to the dead-letter topic with the reason, and consumption goes on.

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
    /// `analytics_events_total{result="applied|duplicate|dead_lettered"}`.
    pub metrics: Arc<Registry>,
}

impl RecordHandler for AnalyticsHandler {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        match parse(record.payload().unwrap_or_default()) {
            Ok(event) => self.apply(&event).await,
            Err(reason) => self.dead_letter(record, reason).await,
        }
    }
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
    #[tracing::instrument(skip_all, fields(partition = record.partition(), offset = record.offset(), reason))]
    async fn dead_letter(&self, record: &OwnedMessage, reason: &'static str) -> anyhow::Result<()> {
        tracing::warn!(reason, "undecodable record sent to the dead-letter topic");
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

/// A record's value as an [`Event`], or why it is not one.
pub fn parse(payload: &[u8]) -> Result<Event, &'static str> {
    let e = PatientEvent::decode(payload).map_err(|_| "value is not a protobuf PatientEvent")?;
    let kind = Kind::parse(&e.event_type).ok_or("unknown event_type")?;
    let event_id = Uuid::parse_str(&e.event_id).map_err(|_| "eventId is missing or not a UUID")?;
    let patient_id = Uuid::parse_str(&e.patient_id).map_err(|_| "patientId is missing or not a UUID")?;
    let date = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    Ok(Event { event_id, patient_id, kind, date_of_birth: date(&e.date_of_birth), registered_date: date(&e.registered_date) })
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

    #[test]
    fn decodes_a_complete_event() {
        let e = parse(&event("PATIENT_CREATED").encode_to_vec()).unwrap();
        assert_eq!(e.kind, Kind::Created);
        assert_eq!(e.registered_date, NaiveDate::from_ymd_opt(2024, 5, 6));
    }

    #[test]
    fn rejects_garbage_unknown_types_and_missing_ids() {
        assert!(parse(b"\xff\xff\xff not protobuf").is_err());
        assert_eq!(parse(&event("PATIENT_RENAMED").encode_to_vec()).unwrap_err(), "unknown event_type");
        let mut no_id = event("PATIENT_CREATED");
        no_id.event_id.clear();
        assert!(parse(&no_id.encode_to_vec()).is_err());
    }
}
