//! Writing `AppointmentEvent`s to the transactional outbox, in the transaction of the change, so
//! an event exists if and only if the change was committed. The relay is the shared one
//! ([`common::outbox`]), keyed by appointment: an appointment's events stay in order.

use chrono::{DateTime, SecondsFormat, Utc};
use common::outbox::Outbox;
use prost::Message;
use proto::appointments::AppointmentEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::domain::Appointment;

/// appointment-service's outbox.
pub const OUTBOX: Outbox = Outbox { key_column: "appointment_id", lock_key: 0x6170_706f_696e_746d };

/// Why an appointment was cancelled (`cancel_reason`).
pub use proto::cancel_reason::{PATIENT_DELETED as CANCELLED_PATIENT_DELETED, REQUESTED as CANCELLED_BY_REQUEST};

/// What a change adds to the appointment's state in its event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Detail<'a> {
    pub cancel_reason: &'a str,
    pub previous_starts_at: Option<DateTime<Utc>>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The event describing `appointment` after the change; its sequence is the new version.
pub fn event_for(event_type: &str, appointment: &Appointment, detail: Detail<'_>, event_id: Uuid) -> AppointmentEvent {
    AppointmentEvent {
        event_id: event_id.to_string(),
        appointment_id: appointment.id.to_string(),
        sequence: u64::try_from(appointment.version).unwrap_or_default(),
        event_type: event_type.to_owned(),
        patient_id: appointment.patient_id.to_string(),
        clinician_id: appointment.clinician_id.to_string(),
        starts_at: rfc3339(appointment.starts_at),
        ends_at: rfc3339(appointment.ends_at),
        status: appointment.status.clone(),
        occurred_at: rfc3339(Utc::now()),
        cancel_reason: detail.cancel_reason.to_owned(),
        previous_starts_at: detail.previous_starts_at.map(rfc3339).unwrap_or_default(),
    }
}

/// Appends the change's event; returns its event id.
#[tracing::instrument(skip_all, fields(appointment_id = %appointment.id, event_type, event_id))]
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    event_type: &str,
    appointment: &Appointment,
    detail: Detail<'_>,
    traceparent: Option<&str>,
) -> sqlx::Result<Uuid> {
    let event_id = Uuid::new_v4();
    tracing::Span::current().record("event_id", tracing::field::display(event_id));
    let payload = event_for(event_type, appointment, detail, event_id).encode_to_vec();
    sqlx::query("INSERT INTO outbox (event_id, appointment_id, event_type, payload, traceparent) VALUES ($1, $2, $3, $4, $5)")
        .bind(event_id)
        .bind(appointment.id)
        .bind(event_type)
        .bind(payload)
        .bind(traceparent)
        .execute(&mut **tx)
        .await?;
    Ok(event_id)
}
