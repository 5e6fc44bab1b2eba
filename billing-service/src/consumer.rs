//! Consumer of the `patient` topic (group `billing-service`). An event of a patient proves that
//! patient-service committed it: its PENDING account becomes ACTIVE (a VOIDED one is revived from
//! the event). A deleted patient's account is closed. Both are idempotent and CLOSED is final, so
//! redeliveries change nothing. Events fetched together are applied by one statement, in order,
//! all or none. Records that cannot be decoded, and events the database keeps rejecting (e.g. a
//! NUL in a name from another producer), go to the dead-letter topic so one bad record never
//! stops the partition; a database outage is retried in place.

use std::sync::Arc;

use common::kafka::{Batch, DeadLetters, RecordHandler};
use common::metrics::Registry;
use prost::Message as _;
use proto::events::PatientEvent;
use rdkafka::{message::OwnedMessage, Message};
use sqlx::PgPool;
use uuid::Uuid;

use crate::repo::{self, Activation, Effect, PatientChange};

pub struct BillingEventHandler {
    pub db: PgPool,
    pub dead_letters: DeadLetters,
    /// `billing_accounts_closed_total`, `billing_accounts_activated_total{how}`,
    /// `billing_accounts_refreshed_total`.
    pub metrics: Arc<Registry>,
}

/// A record's event and its patient id, or why the record is of no use.
fn decode(record: &OwnedMessage) -> Result<(PatientEvent, Uuid), &'static str> {
    let event = PatientEvent::decode(record.payload().unwrap_or_default()).map_err(|_| "value is not a protobuf PatientEvent")?;
    let patient_id = Uuid::parse_str(&event.patient_id).map_err(|_| "patientId is not a UUID")?;
    Ok((event, patient_id))
}

/// Whether billing does anything with events of this type (others never reach the database).
fn concerns_billing(event: &PatientEvent) -> bool {
    use proto::event_type::{PATIENT_CREATED, PATIENT_DELETED, PATIENT_UPDATED};
    [PATIENT_CREATED, PATIENT_UPDATED, PATIENT_DELETED].contains(&event.event_type.as_str())
}

fn change(event: &PatientEvent, patient_id: Uuid) -> PatientChange<'_> {
    // A deletion's contact is never used: not sent, so a value PostgreSQL refuses (a NUL from
    // another producer) cannot dead-letter the deletion and leave the account open.
    let deleted = event.event_type == proto::event_type::PATIENT_DELETED;
    PatientChange {
        patient_id,
        event_type: &event.event_type,
        name: if deleted { "" } else { &event.name },
        email: if deleted { "" } else { &event.email },
        // Past i64 no producer counts: taken as unknown, so it cannot pin the contact for ever.
        sequence: i64::try_from(event.sequence).unwrap_or(0),
    }
}

impl RecordHandler for BillingEventHandler {
    async fn handle(&self, record: &OwnedMessage) -> anyhow::Result<()> {
        let (event, patient_id) = match decode(record) {
            Ok(decoded) => decoded,
            Err(reason) => return self.dead_letters.send(record, reason).await,
        };
        if !concerns_billing(&event) {
            return Ok(());
        }
        self.dead_letters
            .apply_or_dead_letter(record, || async {
                let effects = repo::apply_events(&self.db, &[change(&event, patient_id)]).await?;
                self.count(patient_id, effects[0]);
                Ok(())
            })
            .await
    }

    /// Events fetched together go in one statement; a record that does not decode sends the
    /// batch one by one (so it is dead-lettered), as does a failure: nothing was applied then.
    async fn handle_batch(&self, records: &[OwnedMessage]) -> anyhow::Result<Batch> {
        let Ok(decoded) = records.iter().map(decode).collect::<Result<Vec<_>, _>>() else {
            return Ok(Batch::OneByOne);
        };
        let changes: Vec<PatientChange<'_>> =
            decoded.iter().filter(|(event, _)| concerns_billing(event)).map(|(event, id)| change(event, *id)).collect();
        if changes.is_empty() {
            return Ok(Batch::Applied);
        }
        let effects = repo::apply_events(&self.db, &changes).await?;
        for (c, effect) in changes.iter().zip(effects) {
            self.count(c.patient_id, effect);
        }
        Ok(Batch::Applied)
    }
}

impl BillingEventHandler {
    /// Metrics and log line of one event's effect.
    fn count(&self, patient_id: Uuid, effect: Effect) {
        match effect {
            Effect::Closed(closed) => {
                if closed {
                    self.metrics.inc("billing_accounts_closed_total");
                }
                tracing::info!(%patient_id, closed, "patient deleted: billing account closed");
            }
            Effect::Activation(how) => {
                let series = match how {
                    Activation::Unchanged => return,
                    Activation::Refreshed => {
                        self.metrics.inc("billing_accounts_refreshed_total");
                        return;
                    }
                    Activation::Activated => "billing_accounts_activated_total{how=\"pending\"}",
                    Activation::Revived => "billing_accounts_activated_total{how=\"voided\"}",
                    Activation::Opened => "billing_accounts_activated_total{how=\"missing\"}",
                };
                self.metrics.inc(series);
                // One line per account and event at debug: the series above counts them.
                tracing::debug!(%patient_id, ?how, "patient committed: billing account active");
            }
            Effect::Ignored => {}
        }
    }
}
