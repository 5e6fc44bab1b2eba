//! Writing `PatientEvent`s to the transactional outbox, in the transaction of the change itself,
//! so an event exists if and only if the change was committed.

use chrono::Utc;
use prost::Message;
use proto::events::PatientEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::domain::Patient;

/// patient-service's outbox: keyed by patient, so a patient's events stay in order.
pub const OUTBOX: common::outbox::Outbox = common::outbox::Outbox { key_column: "patient_id", lock_key: 0x0070_6174_6965_6e74 };

/// Kinds of patient events (`event_type` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Created,
    Updated,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => proto::event_type::PATIENT_CREATED,
            EventType::Updated => proto::event_type::PATIENT_UPDATED,
            EventType::Deleted => proto::event_type::PATIENT_DELETED,
        }
    }
}

/// The event describing `patient` after (or, for a delete, just before) the change. Its
/// `sequence` is the patient's version after the change (a delete is one more change).
pub fn event_for(kind: EventType, patient: &Patient, event_id: Uuid) -> PatientEvent {
    let version = u64::try_from(patient.version).unwrap_or_default();
    PatientEvent {
        patient_id: patient.id.to_string(),
        name: patient.name.clone(),
        email: patient.email.clone(),
        event_type: kind.as_str().to_owned(),
        event_id: event_id.to_string(),
        occurred_at: Utc::now().to_rfc3339(),
        date_of_birth: patient.date_of_birth.to_string(),
        registered_date: patient.registered_date.to_string(),
        sequence: if kind == EventType::Deleted { version + 1 } else { version },
    }
}

/// An event about to be written: built before the statement that writes it, so a create can
/// insert the patient and its event in ONE statement (see [`crate::repo::insert_with_event`]).
#[derive(Debug)]
pub struct NewEvent<'a> {
    pub event_id: Uuid,
    pub kind: EventType,
    pub payload: Vec<u8>,
    pub traceparent: Option<&'a str>,
}

impl<'a> NewEvent<'a> {
    pub fn new(kind: EventType, patient: &Patient, traceparent: Option<&'a str>) -> Self {
        let event_id = Uuid::new_v4();
        Self { event_id, kind, payload: event_for(kind, patient, event_id).encode_to_vec(), traceparent }
    }
}

/// Appends one event row; returns its event id.
#[tracing::instrument(skip_all, fields(patient_id = %patient.id, event_type = kind.as_str(), event_id))]
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    kind: EventType,
    patient: &Patient,
    traceparent: Option<&str>,
) -> sqlx::Result<Uuid> {
    let event_id = Uuid::new_v4();
    tracing::Span::current().record("event_id", tracing::field::display(event_id));
    let payload = event_for(kind, patient, event_id).encode_to_vec();
    sqlx::query(
        r#"
        INSERT INTO outbox (event_id, patient_id, event_type, payload, traceparent)
        VALUES ($1, $2, $3, $4, $5)
        "#,
    )
    .bind(event_id)
    .bind(patient.id)
    .bind(kind.as_str())
    .bind(payload)
    .bind(traceparent)
    .execute(&mut **tx)
    .await?;
    Ok(event_id)
}
