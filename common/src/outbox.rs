//! The transactional outbox's relay, shared by every service that publishes events: unsent rows
//! of the service's `outbox` table go to Kafka in id order and are marked sent (their payload
//! dropped) only after the broker acknowledged them.
//!
//! - Rows are claimed with `FOR UPDATE SKIP LOCKED`, so two replicas never publish the same row;
//!   a transaction-scoped advisory lock lets one replica publish at a time, which keeps events of
//!   one aggregate in order across replicas too.
//! - The producer is idempotent (acks=all), keyed by the aggregate's id (the table's key column:
//!   `patient_id`, `appointment_id`): an aggregate's events share a partition and arrive in order.
//! - The table: `id bigserial`, `event_id uuid`, the key column (uuid), `payload bytea` (NULL once
//!   sent), `traceparent text`, `sent_at timestamptz`, with an index on (key, id) of unsent rows.
//!   A published row stays as the record of its publication for `OUTBOX_RETENTION_HOURS`, then
//!   the relay deletes it.
//! - Kafka down: the batch fails after the delivery timeout, nothing is marked, the relay backs
//!   off and tries again; the API is unaffected. Delivery is at-least-once (a crash between the
//!   broker's ack and our commit re-sends); consumers de-duplicate on the event id.

use std::{sync::Arc, time::Duration};

use crate::metrics::Registry;

use anyhow::Context;
use rdkafka::{
    error::{KafkaError, KafkaResult},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Which outbox: the column holding the aggregate id (the record key), and the advisory lock
/// that serialises publishing across replicas (any fixed number, distinct per service).
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    pub key_column: &'static str,
    pub lock_key: i64,
}

/// An unsent outbox row, claimed for publishing.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    /// The aggregate's id: the record key.
    pub key: Uuid,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

impl Outbox {
    /// Locks up to `limit` unsent rows, oldest first, at most ONE per aggregate: an aggregate's
    /// event is never claimed while an earlier one of it is unsent, so however the broker fails,
    /// a later event can never be acknowledged before an earlier one of the same aggregate.
    pub async fn claim(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
        // The column name is a constant of the service, never input.
        let key = self.key_column;
        sqlx::query_as(&format!(
            r#"
            SELECT id, event_id, {key} AS key, payload, traceparent
            FROM outbox o
            WHERE sent_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM outbox earlier
                              WHERE earlier.{key} = o.{key} AND earlier.sent_at IS NULL AND earlier.id < o.id)
            ORDER BY id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
            "#
        ))
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
    }
}

/// The relay's knobs, the same for every service.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Outbox rows published per relay transaction.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 100)]
    pub outbox_batch_size: i64,
    /// How often the relay looks for new outbox rows when idle.
    #[arg(long, env = "OUTBOX_POLL_MS", default_value_t = 200)]
    pub outbox_poll_ms: u64,
    /// How long a published row (event id, aggregate id, type, times; no payload) is kept as the
    /// record of its publication before it is deleted; 0 keeps them for good.
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 720,
          value_parser = clap::value_parser!(u64).range(0..=876_000))]
    pub outbox_retention_hours: u64,
    /// How often the relay deletes published rows older than the retention.
    #[arg(long, env = "OUTBOX_PURGE_EVERY_SECS", default_value_t = 3_600)]
    pub outbox_purge_every_secs: u64,
}

impl RelayArgs {
    /// For tests: a short idle poll, so events leave at once.
    pub fn eager() -> Self {
        Self { outbox_batch_size: 100, outbox_poll_ms: 50, ..Self::default() }
    }

    /// The relay of `outbox` in `db`, publishing to `kafka`'s topic; None when Kafka is disabled
    /// (events then wait in the outbox).
    pub fn relay(
        &self,
        outbox: Outbox,
        db: &PgPool,
        kafka: &crate::kafka::KafkaArgs,
        metrics: &Arc<Registry>,
    ) -> anyhow::Result<Option<Relay>> {
        if kafka.kafka_disabled {
            tracing::warn!("Kafka disabled: outbox events are kept but not published");
            return Ok(None);
        }
        Ok(Some(Relay {
            outbox,
            db: db.clone(),
            producer: kafka.producer().context("failed to create the Kafka producer")?,
            topic: kafka.kafka_topic.clone(),
            batch_size: self.outbox_batch_size,
            idle_poll: Duration::from_millis(self.outbox_poll_ms),
            retention: (self.outbox_retention_hours > 0).then(|| Retention {
                hours: i32::try_from(self.outbox_retention_hours.min(876_000)).unwrap_or(876_000),
                every: Duration::from_secs(self.outbox_purge_every_secs.max(1)),
            }),
            metrics: metrics.clone(),
        }))
    }
}

impl Default for RelayArgs {
    /// The defaults of the command line.
    fn default() -> Self {
        Self { outbox_batch_size: 100, outbox_poll_ms: 200, outbox_retention_hours: 720, outbox_purge_every_secs: 3_600 }
    }
}

/// How long published rows are kept, and how often older ones are deleted.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// A published row is deleted this many hours after it was sent.
    pub hours: i32,
    /// The time between two purges.
    pub every: Duration,
}

/// Published rows deleted per statement of a purge, and the most statements one purge makes (the
/// rest waits for the next purge: a first purge of a large backlog is spread out).
const PURGE_CHUNK: i64 = 5_000;
const PURGE_STATEMENTS: usize = 100;

/// One relay transaction's outcome.
#[derive(Default)]
struct Batch {
    sent: usize,
    failure: Option<anyhow::Error>,
    /// Every failure was the broker (or the producer) refusing an event itself, not an outage.
    refused_only: bool,
}

/// The wait after a batch whose only failures were refused events (see [`Relay::run`]).
const REFUSED_RETRY: Duration = Duration::from_secs(1);

/// Whether the broker or the producer refuses this record itself (it would refuse it every time),
/// as opposed to being unreachable.
fn refuses_the_record(err: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{
        InvalidMessage, InvalidMessageSize, InvalidRecord, MessageSizeTooLarge, PolicyViolation,
    };
    matches!(
        err.rdkafka_error_code(),
        Some(MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord | PolicyViolation)
    )
}

pub struct Relay {
    pub outbox: Outbox,
    pub db: PgPool,
    pub producer: crate::kafka::EventProducer,
    pub topic: String,
    pub batch_size: i64,
    pub idle_poll: Duration,
    /// None: published rows are kept for good.
    pub retention: Option<Retention>,
    /// `outbox_events_total{result="published|failed"}`, `outbox_rows_purged_total`.
    pub metrics: Arc<Registry>,
}

impl Relay {
    /// Publishes until `stop`, then flushes the producer.
    ///
    /// A batch that published something is followed by the next at once, even when some of its
    /// events failed (they are retried there). A batch that published nothing backs off: 250 ms
    /// doubling to 10 s when the broker is away, but a steady 1 s when it only refused events
    /// themselves (too large, say): an event the broker keeps refusing (it waits, with its
    /// aggregate's later ones) delays every other aggregate's by at most that second.
    ///
    /// Beside it, published rows past the retention are deleted (`purge`), so the
    /// purge never holds up publishing.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let (published, ()) = tokio::join!(self.publish_until(stop.clone()), self.purge_until(stop));
        published
    }

    /// Every `retention.every`, from the start, until `stop`.
    async fn purge_until(&self, stop: CancellationToken) {
        let Some(retention) = self.retention else { return };
        while !stop.is_cancelled() {
            match self.purge(retention).await {
                Ok(0) => {}
                Ok(purged) => {
                    tracing::info!(
                        purged,
                        retention_hours = retention.hours,
                        "outbox: published rows past their retention deleted"
                    )
                }
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "outbox purge failed; tried again at the next one"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(retention.every) => {}
            }
        }
    }

    async fn publish_until(&self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(250);
        while !stop.is_cancelled() {
            let (failure, refused_only) = match self.publish_batch().await {
                Ok(batch) => {
                    if let Some(err) = &batch.failure {
                        tracing::warn!(error = %format!("{err:#}"), sent = batch.sent, "outbox relay: events not acknowledged; they wait in the outbox");
                        self.producer.renew_if_fatal();
                    }
                    if batch.sent > 0 {
                        tracing::debug!(sent = batch.sent, "outbox batch published");
                        backoff = Duration::from_millis(250);
                        continue;
                    }
                    (batch.failure, batch.refused_only)
                }
                Err(err) => (Some(err), false),
            };
            let wait = match failure {
                None => self.idle_poll,
                Some(_) if refused_only => REFUSED_RETRY,
                Some(err) => {
                    tracing::warn!(error = %format!("{err:#}"), retry_in_ms = backoff.as_millis() as u64, "outbox relay: nothing published; trying again");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    wait
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        let producer = self.producer.current();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
            .await
            .context("producer flush panicked")?
            .context("producer flush failed")?;
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    /// Deletes published rows sent longer than the retention ago, oldest first, in chunks; how
    /// many. Unsent rows are never deleted, however old (nor do they stop the purge of later
    /// published ones). Rows another replica's purge holds are skipped.
    async fn purge(&self, retention: Retention) -> anyhow::Result<u64> {
        let mut purged = 0;
        for _ in 0..PURGE_STATEMENTS {
            let deleted = sqlx::query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                 WHERE sent_at < now() - make_interval(hours => $1) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            .bind(retention.hours)
            .bind(PURGE_CHUNK)
            .execute(&self.db)
            .await
            .context("failed to delete published outbox rows")?
            .rows_affected();
            purged += deleted;
            self.metrics.add("outbox_rows_purged_total", deleted);
            if deleted == 0 {
                break;
            }
        }
        Ok(purged)
    }

    /// Publishes one batch: how many rows were marked sent, and the first failure of those that
    /// were not (an `Err` when the database failed: nothing was marked).
    #[tracing::instrument(skip_all, fields(rows))]
    async fn publish_batch(&self) -> anyhow::Result<Batch> {
        let mut tx = self.db.begin().await.context("failed to begin relay transaction")?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(self.outbox.lock_key)
            .fetch_one(&mut *tx)
            .await
            .context("failed to take the relay lock")?;
        if !leader {
            return Ok(Batch::default());
        }
        let rows = self.outbox.claim(&mut tx, self.batch_size).await.context("failed to claim outbox rows")?;
        tracing::Span::current().record("rows", rows.len());
        if rows.is_empty() {
            return Ok(Batch::default());
        }

        // Enqueue the whole batch, then collect acknowledgements in order.
        let producer = self.producer.current();
        let deliveries: Vec<_> = rows.iter().map(|row| (row.id, self.send(&producer, row))).collect();
        let mut acked = Vec::with_capacity(rows.len());
        let (mut failure, mut refused_only) = (None, true);
        let mut failed = |err: anyhow::Error, refused: bool| {
            refused_only &= refused;
            failure.get_or_insert(err);
        };
        for (id, delivery) in deliveries {
            match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(_)) => acked.push(id),
                    Ok(Err((err, _))) => {
                        let refused = refuses_the_record(&err);
                        failed(anyhow::Error::new(err).context("broker did not acknowledge"), refused);
                    }
                    Err(_) => failed(anyhow::anyhow!("delivery report lost"), false),
                },
                Err(err) => {
                    let refused = refuses_the_record(&err);
                    failed(anyhow::Error::new(err).context("producer queue refused the event"), refused);
                }
            }
        }
        if !acked.is_empty() {
            sqlx::query("UPDATE outbox SET sent_at = now(), payload = NULL WHERE id = ANY($1)")
                .bind(&acked)
                .execute(&mut *tx)
                .await
                .context("failed to mark outbox rows sent")?;
        }
        tx.commit().await.context("failed to commit relay transaction")?;
        self.metrics.add("outbox_events_total{result=\"published\"}", acked.len() as u64);
        self.metrics.add("outbox_events_total{result=\"failed\"}", (rows.len() - acked.len()) as u64);
        let failure = failure.map(|err| err.context(format!("{} of {} events published", acked.len(), rows.len())));
        Ok(Batch { sent: acked.len(), refused_only: failure.is_some() && refused_only, failure })
    }

    fn send(&self, producer: &FutureProducer, row: &OutboxRow) -> KafkaResult<rdkafka::producer::DeliveryFuture> {
        let key = row.key.to_string();
        let event_id = row.event_id.to_string();
        let mut headers = OwnedHeaders::new().insert(Header { key: "event-id", value: Some(event_id.as_str()) });
        // A publish span in the change's trace; the record carries it to the consumers.
        let trace_id = row.traceparent.as_deref().and_then(crate::telemetry::trace_id_of).unwrap_or_default();
        let span = tracing::info_span!("publish", event_id = %row.event_id, trace_id);
        if let Some(tp) = &row.traceparent {
            crate::telemetry::continue_trace_from(&span, tp);
        }
        let traceparent = span.in_scope(crate::telemetry::current_traceparent).or_else(|| row.traceparent.clone());
        if let Some(tp) = &traceparent {
            headers = headers.insert(Header { key: "traceparent", value: Some(tp.as_str()) });
        }
        let record = FutureRecord::to(&self.topic).key(&key).payload(&row.payload).headers(headers);
        producer.send_result(record).map_err(|(err, _)| err)
    }
}
