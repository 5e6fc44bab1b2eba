//! Consumer of the `patient` topic (group `billing-service`). An event of a patient proves that
//! patient-service committed it: its PENDING account becomes ACTIVE (a VOIDED one is revived from
//! the event). A deleted patient's account is closed. Both are idempotent and CLOSED is final, so
//! redeliveries change nothing. Records that cannot be decoded, and events the database keeps
//! rejecting (e.g. a NUL in a name from another producer), go to the dead-letter topic so one
//! bad record never stops the partition; a database outage is retried in place.

use std::sync::Arc;

use anyhow::Context;
use common::kafka::{DeadLetters, RecordHandler};
use common::metrics::Registry;
use prost::Message as _;
use proto::events::PatientEvent;
use rdkafka::{message::OwnedMessage, Message};
use sqlx::PgPool;
use uuid::Uuid;

use crate::repo::{self, Activation};

pub struct BillingEventHandler {
    pub db: PgPool,
    pub dead_letters: DeadLetters,
    /// `billing_accounts_closed_total`, `billing_accounts_activated_total{how}`.
    pub metrics: Arc<Registry>,
}

impl RecordHandler for BillingEventHandler {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        let Ok(event) = PatientEvent::decode(record.payload().unwrap_or_default()) else {
            return self.dead_letters.send(record, "value is not a protobuf PatientEvent").await;
        };
        let Ok(patient_id) = Uuid::parse_str(&event.patient_id) else {
            return self.dead_letters.send(record, "patientId is not a UUID").await;
        };
        self.dead_letters.apply_or_dead_letter(record, || self.apply(&event, patient_id)).await
    }
}

impl BillingEventHandler {
    async fn apply(&self, event: &PatientEvent, patient_id: Uuid) -> anyhow::Result<()> {
        match event.event_type.as_str() {
            proto::event_type::PATIENT_DELETED => {
                let closed = repo::close_for_patient(&self.db, patient_id).await.context("failed to close billing account")?;
                if closed {
                    self.metrics.inc("billing_accounts_closed_total");
                }
                tracing::info!(%patient_id, closed, "patient deleted: billing account closed");
            }
            proto::event_type::PATIENT_CREATED | proto::event_type::PATIENT_UPDATED => {
                let how = repo::activate_for_patient(&self.db, patient_id, &event.name, &event.email)
                    .await
                    .context("failed to activate billing account")?;
                let series = match how {
                    Activation::Unchanged => return Ok(()),
                    Activation::Activated => "billing_accounts_activated_total{how=\"pending\"}",
                    Activation::Revived => "billing_accounts_activated_total{how=\"voided\"}",
                    Activation::Opened => "billing_accounts_activated_total{how=\"missing\"}",
                };
                self.metrics.inc(series);
                tracing::info!(%patient_id, ?how, "patient committed: billing account active");
            }
            _ => {}
        }
        Ok(())
    }
}
