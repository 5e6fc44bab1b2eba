//! Consumer of the `patient` topic (group `billing-service`): a deleted patient's account is
//! closed. Closing is idempotent, so redeliveries change nothing.

use std::sync::Arc;

use anyhow::Context;
use common::kafka::RecordHandler;
use common::metrics::Registry;
use prost::Message as _;
use proto::events::PatientEvent;
use rdkafka::{message::OwnedMessage, Message};
use sqlx::PgPool;
use uuid::Uuid;

use crate::repo;

pub struct BillingEventHandler {
    pub db: PgPool,
    /// `billing_accounts_closed_total`.
    pub metrics: Arc<Registry>,
}

impl RecordHandler for BillingEventHandler {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        let Ok(event) = PatientEvent::decode(record.payload().unwrap_or_default()) else {
            // analytics-service dead-letters undecodable records; billing just moves on.
            tracing::warn!(partition = record.partition(), offset = record.offset(), "skipping undecodable record");
            return Ok(());
        };
        if event.event_type != proto::event_type::PATIENT_DELETED {
            return Ok(());
        }
        let Ok(patient_id) = Uuid::parse_str(&event.patient_id) else {
            tracing::warn!(offset = record.offset(), "skipping PATIENT_DELETED without a valid patientId");
            return Ok(());
        };
        let closed = repo::close_for_patient(&self.db, patient_id).await.context("failed to close billing account")?;
        if closed {
            self.metrics.inc("billing_accounts_closed_total");
        }
        tracing::info!(%patient_id, closed, "patient deleted: billing account closed");
        Ok(())
    }
}
