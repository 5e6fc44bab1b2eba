//! The replica of patients (the "cached patient repository"), fed by the `patient` topic (group
//! `appointment-service`): which patients exist and which were deleted, nothing personal.
//!
//! - A patient's events apply in sequence order; an older one than the newest applied is ignored
//!   (sequence 0: a producer without sequences, applied as it comes).
//! - PATIENT_DELETED is final: the patient's future BOOKED appointments are cancelled in the same
//!   transaction, each with its APPOINTMENT_CANCELLED event in the outbox.
//! - Undecodable records go to the dead-letter topic; a redelivered event changes nothing.

use anyhow::Context;
use chrono::Utc;
use common::kafka::{DeadLetters, RecordHandler};
use prost::Message as _;
use proto::{event_type, events::PatientEvent};
use rdkafka::{message::OwnedMessage, Message};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::{self, Detail, CANCELLED_PATIENT_DELETED};

pub struct PatientReplica {
    pub db: PgPool,
    pub dead_letters: DeadLetters,
}

/// What the replica takes from a `PatientEvent`.
#[derive(Debug, Clone, Copy)]
struct Change {
    patient_id: Uuid,
    sequence: i64,
    deleted: bool,
}

fn parse(payload: &[u8]) -> Result<Change, &'static str> {
    let event = PatientEvent::decode(payload).map_err(|_| "not a PatientEvent")?;
    let patient_id = common::extract::canonical_uuid(&event.patient_id).ok_or("patientId is not a UUID")?;
    let deleted = match event.event_type.as_str() {
        event_type::PATIENT_CREATED | event_type::PATIENT_UPDATED => false,
        event_type::PATIENT_DELETED => true,
        _ => return Err("unknown event_type"),
    };
    // Past i64 no producer counts: taken as unknown (0), as billing and analytics do, so such a
    // deletion is applied instead of dead-lettered.
    let sequence = i64::try_from(event.sequence).unwrap_or(0);
    Ok(Change { patient_id, sequence, deleted })
}

impl RecordHandler for PatientReplica {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        let change = match parse(record.payload().unwrap_or_default()) {
            Ok(change) => change,
            Err(reason) => return self.dead_letters.send(record, reason).await,
        };
        let traceparent = common::kafka::header(record, "traceparent");
        self.dead_letters.apply_or_dead_letter(record, || self.apply(change, traceparent)).await
    }
}

impl PatientReplica {
    #[tracing::instrument(skip_all, fields(patient_id = %change.patient_id, sequence = change.sequence, deleted = change.deleted))]
    async fn apply(&self, change: Change, traceparent: Option<&str>) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await.context("failed to begin transaction")?;
        if change.deleted {
            sqlx::query(
                r#"
                INSERT INTO patients (id, sequence, deleted) VALUES ($1, $2, true)
                ON CONFLICT (id) DO UPDATE SET deleted = true, sequence = greatest(patients.sequence, EXCLUDED.sequence),
                                               updated_at = now()
                "#,
            )
            .bind(change.patient_id)
            .bind(change.sequence)
            .execute(&mut *tx)
            .await
            .context("failed to mark the patient deleted")?;
            let cancelled = crate::repo::cancel_future_of_patient(&mut tx, change.patient_id, Utc::now())
                .await
                .context("failed to cancel the patient's appointments")?;
            let detail = Detail { cancel_reason: CANCELLED_PATIENT_DELETED, previous_starts_at: None };
            for appointment in &cancelled {
                events::record(&mut tx, proto::appointment_event_type::CANCELLED, appointment, detail, traceparent)
                    .await
                    .context("failed to record a cancellation")?;
            }
            if !cancelled.is_empty() {
                tracing::info!(cancelled = cancelled.len(), "deleted patient's future appointments cancelled");
            }
        } else {
            // Newer than what the replica holds, and never resurrecting a deleted patient.
            sqlx::query(
                r#"
                INSERT INTO patients (id, sequence) VALUES ($1, $2)
                ON CONFLICT (id) DO UPDATE SET sequence = EXCLUDED.sequence, updated_at = now()
                WHERE NOT patients.deleted AND patients.sequence < EXCLUDED.sequence
                "#,
            )
            .bind(change.patient_id)
            .bind(change.sequence)
            .execute(&mut *tx)
            .await
            .context("failed to record the patient")?;
        }
        tx.commit().await.context("failed to commit the patient change")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_deletion_with_a_sequence_past_any_count_is_applied_as_unordered() {
        let event = PatientEvent {
            patient_id: uuid::Uuid::new_v4().to_string(),
            event_type: event_type::PATIENT_DELETED.into(),
            sequence: u64::MAX,
            ..Default::default()
        };
        let change = parse(&event.encode_to_vec()).expect("not dead-lettered");
        assert!(change.deleted);
        assert_eq!(change.sequence, 0);
    }
}
