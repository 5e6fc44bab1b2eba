//! Kafka plumbing shared by the event producers and consumers: one settings block, the
//! producer and consumer configurations, and the at-least-once consume loop.
//!
//! The loop stores a record's offset only after its handler succeeded (the effect is durable),
//! and retries a failing handler in place (backing off) rather than skipping the record; the
//! stored offsets are committed in the background and once more on shutdown. Records already
//! fetched are offered to the handler together first (one statement for a busy topic); when it
//! cannot take them together, they go one at a time.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use futures::FutureExt as _;
use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{BorrowedMessage, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Kafka settings, flattened into each service's settings.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap_servers: String,
    /// Topic of patient events.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "patient")]
    pub kafka_topic: String,
    /// Run without Kafka (no event publishing or consuming): for gRPC/REST-only set-ups.
    #[arg(long, env = "KAFKA_DISABLED", default_value_t = false)]
    pub kafka_disabled: bool,
    /// Partitions of topics this service creates (events of one patient share one partition).
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3)]
    pub kafka_topic_partitions: i32,
    /// How long the producer keeps trying to deliver one record before reporting failure.
    #[arg(long, env = "KAFKA_DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_delivery_timeout_ms: u64,
    /// Tries of a consumed event the database rejects (a data or constraint error) before it
    /// goes to the dead-letter topic. Other failures (database down) are retried without limit.
    #[arg(long, env = "POISON_MAX_ATTEMPTS", default_value_t = 3)]
    pub poison_max_attempts: u32,
    /// Bytes of records the broker waits for before it answers a consumer's fetch (or until
    /// `KAFKA_FETCH_WAIT_MAX_MS` passes): under load a fetch brings a batch, fewer requests for
    /// the broker and fewer statements for handlers that apply batches. 1 answers at once.
    #[arg(long, env = "KAFKA_FETCH_MIN_BYTES", default_value_t = FETCH_MIN_BYTES)]
    pub kafka_fetch_min_bytes: u32,
    /// Longest a fetch waits at the broker for those bytes: the most latency batching adds to
    /// an event when few arrive.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MAX_MS", default_value_t = FETCH_WAIT_MAX_MS)]
    pub kafka_fetch_wait_max_ms: u32,
}

const FETCH_MIN_BYTES: u32 = 64 * 1024;
const FETCH_WAIT_MAX_MS: u32 = 50;

impl KafkaArgs {
    /// Settings for a broker at `bootstrap` and a topic (tests, tools).
    pub fn new(bootstrap: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            kafka_bootstrap_servers: bootstrap.into(),
            kafka_topic: topic.into(),
            kafka_disabled: false,
            kafka_topic_partitions: 3,
            kafka_delivery_timeout_ms: 10_000,
            poison_max_attempts: 3,
            kafka_fetch_min_bytes: FETCH_MIN_BYTES,
            kafka_fetch_wait_max_ms: FETCH_WAIT_MAX_MS,
        }
    }

    /// No Kafka at all.
    pub fn disabled() -> Self {
        Self { kafka_disabled: true, ..Self::new("127.0.0.1:9", "patient") }
    }

    /// The dead-letter topic of the events topic.
    pub fn dead_letter_topic(&self) -> String {
        dead_letter_topic_of(&self.kafka_topic)
    }

    /// The same broker, another events topic.
    pub fn with_topic(&self, topic: &str) -> Self {
        Self { kafka_topic: topic.to_owned(), ..self.clone() }
    }

    /// A consumer of `group` on the events topic and its dead-letter writer (counting into
    /// `series`), both topics created when missing.
    pub async fn consumer_with_dead_letters(
        &self,
        group: &str,
        metrics: std::sync::Arc<crate::metrics::Registry>,
        series: &'static str,
    ) -> anyhow::Result<(EventConsumer, DeadLetters)> {
        self.consumer_of_topics_with_dead_letters(group, &[&self.kafka_topic], metrics, series).await
    }

    /// A consumer of `group` on several topics, and the dead-letter writer (a record goes to its
    /// own topic's `.DLT`); every topic and dead-letter topic created when missing.
    pub async fn consumer_of_topics_with_dead_letters(
        &self,
        group: &str,
        topics: &[&str],
        metrics: std::sync::Arc<crate::metrics::Registry>,
        series: &'static str,
    ) -> anyhow::Result<(EventConsumer, DeadLetters)> {
        let dead: Vec<String> = topics.iter().map(|t| dead_letter_topic_of(t)).collect();
        let all: Vec<&str> = topics.iter().copied().chain(dead.iter().map(String::as_str)).collect();
        self.ensure_topics(&all).await;
        let consumer = self.consumer_of(group, topics).context("failed to create the Kafka consumer")?;
        let dead_letters = self.dead_letters(group, metrics, series).context("failed to create the dead-letter producer")?;
        Ok((consumer, dead_letters))
    }

    /// The dead-letter topic's writer for consumer `group`, counting into `series`.
    pub fn dead_letters(
        &self,
        group: &str,
        metrics: std::sync::Arc<crate::metrics::Registry>,
        series: &'static str,
    ) -> anyhow::Result<DeadLetters> {
        metrics.add(series, 0);
        Ok(DeadLetters {
            producer: self.producer()?,
            group: group.to_owned(),
            max_attempts: self.poison_max_attempts.max(1),
            metrics,
            series,
        })
    }

    /// An idempotent producer (acks=all, ordered retries), so a retry never duplicates or
    /// reorders records within a partition; it replaces itself after a fatal error (see
    /// [`EventProducer`]).
    pub fn producer(&self) -> anyhow::Result<EventProducer> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", self.kafka_delivery_timeout_ms.to_string())
            .set("linger.ms", "5");
        let current = config.create()?;
        Ok(EventProducer { config, current: std::sync::Arc::new(std::sync::Mutex::new(current)) })
    }

    /// A consumer of `group` on the events topic that stores offsets only when told to (see
    /// [`consume`]).
    pub fn consumer(&self, group: &str) -> anyhow::Result<EventConsumer> {
        self.consumer_of(group, &[&self.kafka_topic])
    }

    /// The same, on `topics`.
    pub fn consumer_of(&self, group: &str, topics: &[&str]) -> anyhow::Result<EventConsumer> {
        let consumer: EventConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_bootstrap_servers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("isolation.level", "read_committed")
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set("fetch.min.bytes", self.kafka_fetch_min_bytes.to_string())
            .set("fetch.wait.max.ms", self.kafka_fetch_wait_max_ms.to_string())
            .create_with_context(GroupContext::default())?;
        consumer.subscribe(topics)?;
        Ok(consumer)
    }

    /// Asks the broker where partitions end (see [`PartitionEnds`]).
    pub fn partition_ends(&self) -> anyhow::Result<PartitionEnds> {
        let client = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_bootstrap_servers)
            .set("isolation.level", "read_committed")
            .create()
            .context("failed to create the Kafka client for partition ends")?;
        Ok(PartitionEnds { client: std::sync::Arc::new(client) })
    }

    /// Creates the topics that do not exist yet. Failing (Kafka down) is not fatal to a service:
    /// it is logged, and the broker's auto-creation remains as a fallback.
    pub async fn ensure_topics(&self, topics: &[&str]) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        use rdkafka::types::RDKafkaErrorCode;
        let admin: AdminClient<DefaultClientContext> =
            match ClientConfig::new().set("bootstrap.servers", &self.kafka_bootstrap_servers).create() {
                Ok(admin) => admin,
                Err(err) => return tracing::warn!(error = %err, "cannot create a Kafka admin client"),
            };
        let new: Vec<NewTopic<'_>> =
            topics.iter().map(|t| NewTopic::new(t, self.kafka_topic_partitions, TopicReplication::Fixed(1))).collect();
        let options =
            AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))).request_timeout(Some(Duration::from_secs(5)));
        match admin.create_topics(&new, &options).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(topic) => tracing::info!(topic, "topic created"),
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => tracing::warn!(topic, ?code, "topic creation failed"),
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "topic creation failed; relying on broker auto-creation"),
        }
    }
}

/// What a consumer does with one record. `Ok` means its effect is durable.
pub trait RecordHandler: Send + Sync {
    fn handle(&self, record: &OwnedMessage) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Applies records received together (in their order) at once, e.g. in one statement, so a
    /// busy topic costs one round trip per batch rather than per record. `Applied` means every
    /// record's effect is durable; on `OneByOne` or an error none of them may have been applied
    /// (an error after a commit whose answer was lost is a redelivery to `handle`, which every
    /// handler tolerates), and the records then go through [`RecordHandler::handle`] one at a
    /// time (which retries, and dead-letters what cannot be used). The default has no batch path.
    fn handle_batch(&self, records: &[OwnedMessage]) -> impl Future<Output = anyhow::Result<Batch>> + Send {
        let _ = records;
        std::future::ready(Ok(Batch::OneByOne))
    }
}

/// What [`RecordHandler::handle_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Every record's effect is durable.
    Applied,
    /// Nothing was applied: handle the records one by one.
    OneByOne,
}

/// Consumes until `stop`: the records already fetched are taken together and offered to the
/// handler's batch path, else each record is handled (retried with back-off until it succeeds);
/// then their offsets are stored for the next commit; on stop, stored offsets are committed (see
/// [`commit_on_exit`]) and the consumer is closed (see [`close`]).
pub async fn consume(consumer: EventConsumer, handler: &impl RecordHandler, stop: CancellationToken) -> anyhow::Result<()> {
    let result = consume_records(&consumer, handler, stop).await;
    close(consumer).await;
    result
}

/// How long a stopping service waits for its consumer to leave the group.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Closes the consumer (final commit, leaving the group) on a thread of its own, waiting at most
/// [`CLOSE_LIMIT`]: librdkafka's close waits for the broker without end, so a service told to stop
/// while the broker is unreachable would otherwise never exit (and it would block a runtime
/// thread meanwhile). Left behind, the close ends with the process; the group then reassigns the
/// partitions after the session timeout, and uncommitted records are redelivered.
async fn close(consumer: EventConsumer) {
    let (closed, done) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("kafka-consumer-close".into()).spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "could not close the Kafka consumer on a thread of its own");
        return;
    }
    if tokio::time::timeout(CLOSE_LIMIT, done).await.is_err() {
        tracing::warn!(
            limit_ms = CLOSE_LIMIT.as_millis() as u64,
            "Kafka consumer did not close in time (broker unreachable?); stopping without it"
        );
    }
}

/// Where partitions end, asked of the broker: a consumer learns whether records were written
/// after the one in hand (it is catching up on a backlog) and up to which offset.
#[derive(Clone)]
pub struct PartitionEnds {
    client: std::sync::Arc<rdkafka::consumer::BaseConsumer>,
}

impl PartitionEnds {
    /// How long the broker has to answer.
    const LIMIT: Duration = Duration::from_secs(5);

    /// The offset of the last record written to `topic`'s `partition` so far (None while it is
    /// empty). Under a transactional producer it may be a transaction marker, which consumers
    /// never receive.
    pub async fn last_offset(&self, topic: &str, partition: i32) -> anyhow::Result<Option<i64>> {
        let (client, owned) = (self.client.clone(), topic.to_owned());
        // librdkafka's query blocks: off the runtime's threads.
        let (_, end) = tokio::task::spawn_blocking(move || {
            // Nothing is assigned to this client: a poll only serves its queued events (broker
            // errors, say), which would otherwise pile up.
            for _ in 0..64 {
                if client.poll(Duration::ZERO).is_none() {
                    break;
                }
            }
            client.fetch_watermarks(&owned, partition, Self::LIMIT)
        })
        .await
        .context("the partition end query did not finish")?
        .with_context(|| format!("failed to ask where partition {partition} of {topic} ends"))?;
        Ok((end > 0).then_some(end - 1))
    }
}

/// The event consumers' consumer: its context counts the group's rebalances.
pub type EventConsumer = StreamConsumer<GroupContext>;

/// Counts the group's rebalances. Records taken from the consumer before one may belong to a
/// partition it no longer owns, or be fetched again from the committed offset.
#[derive(Debug, Default)]
pub struct GroupContext {
    rebalances: AtomicU64,
}

impl GroupContext {
    fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::SeqCst)
    }
}

impl rdkafka::ClientContext for GroupContext {}

impl rdkafka::consumer::ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, _: &rdkafka::consumer::Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
    }
}

/// Most records taken together from what the consumer has already fetched: the batch a handler
/// may apply in one statement ([`RecordHandler::handle_batch`]).
pub const MAX_BATCH: usize = 200;

async fn consume_records(consumer: &EventConsumer, handler: &impl RecordHandler, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        let first: BorrowedMessage<'_> = tokio::select! {
            () = stop.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(error = %err, "Kafka receive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        // Whatever else is fetched already joins it (never waiting for more): one record when
        // events trickle in, up to MAX_BATCH under load.
        let rebalances = consumer.context().rebalances();
        let mut batch = vec![first.detach()];
        while batch.len() < MAX_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "Kafka receive failed");
                    break;
                }
                None => break,
            }
        }
        if consumer.context().rebalances() != rebalances {
            // Taking more served a rebalance: the partitions were revoked (their stored offsets
            // committed) and assigned anew, so every record taken is fetched again from the
            // committed offset, here or by its partition's new owner. Handling them now would
            // handle them twice.
            tracing::info!(records = batch.len(), "the group rebalanced; records taken before are handled when fetched again");
            continue;
        }
        // One span per record, in the trace of the change that produced it.
        let spans: Vec<tracing::Span> = batch.iter().map(record_span).collect();
        if batch.len() > 1 && handle_together(handler, &batch).await {
            store_offsets(consumer, &batch);
            continue;
        }
        for (record, span) in batch.iter().zip(&spans) {
            if stop.is_cancelled() || !handle_until_done(handler, record, span, &stop).await {
                return commit_on_exit(consumer);
            }
            store_offsets(consumer, std::slice::from_ref(record));
        }
    }
    commit_on_exit(consumer)
}

/// The `consume` span of a record: a child of the span that published it.
fn record_span(record: &OwnedMessage) -> tracing::Span {
    let traceparent = header(record, "traceparent");
    let trace_id = traceparent.and_then(crate::telemetry::trace_id_of).unwrap_or_default();
    let (topic, partition, offset) = (record.topic(), record.partition(), record.offset());
    let span = tracing::info_span!("consume", topic, partition, offset, trace_id);
    if let Some(tp) = traceparent {
        crate::telemetry::continue_trace_from(&span, tp);
    }
    span
}

/// One try of the handler's batch path; false when the records must go one by one (the handler
/// has none for these records, or it failed).
async fn handle_together(handler: &impl RecordHandler, batch: &[OwnedMessage]) -> bool {
    // A span of its own: the batch belongs to no single record's trace. Each record's `consume`
    // span stays open until the batch is durable.
    let (first, last) = (&batch[0], &batch[batch.len() - 1]);
    let span = tracing::info_span!(parent: None, "consume_batch", records = batch.len(), first_offset = first.offset(), last_offset = last.offset());
    match handler.handle_batch(batch).instrument(span).await {
        Ok(Batch::Applied) => true,
        Ok(Batch::OneByOne) => false,
        Err(err) => {
            tracing::info!(error = %format!("{err:#}"), records = batch.len(), "batch not applied; handling its records one by one");
            false
        }
    }
}

/// Handles one record, retrying in place (backing off) until it succeeds; false when told to
/// stop first.
async fn handle_until_done(
    handler: &impl RecordHandler,
    record: &OwnedMessage,
    span: &tracing::Span,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        match handler.handle(record).instrument(span.clone()).await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    partition = record.partition(),
                    offset = record.offset(),
                    "handling a record failed; retrying"
                );
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Stores the offsets of handled records for the next commit: per partition, the last one.
/// After a rebalance took a partition away this fails; the records' effects are durable and its
/// new owner re-reads them (duplicates every handler tolerates), so carry on.
fn store_offsets(consumer: &EventConsumer, records: &[OwnedMessage]) {
    let mut last: Vec<(&str, i32, i64)> = Vec::new();
    for r in records {
        match last.iter_mut().find(|(t, p, _)| *t == r.topic() && *p == r.partition()) {
            Some(entry) => entry.2 = entry.2.max(r.offset()),
            None => last.push((r.topic(), r.partition(), r.offset())),
        }
    }
    for (topic, partition, offset) in last {
        if let Err(err) = consumer.store_offset(topic, partition, offset) {
            tracing::warn!(error = %err, partition, offset, "could not store offset");
        }
    }
}

/// Asks for a commit of the stored offsets without waiting for it: a synchronous commit waits for
/// the broker without end. Closing the consumer ([`close`]) then completes it. An offset not
/// committed only means a redelivery, which every handler tolerates.
fn commit_on_exit(consumer: &EventConsumer) -> anyhow::Result<()> {
    match consumer.commit_consumer_state(CommitMode::Async) {
        // Nothing stored since the last commit is not an error.
        Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(err) => {
            tracing::warn!(error = %err, "final offset commit failed; records since the last commit will be redelivered");
            Ok(())
        }
    }
}

/// An idempotent producer that outlives a fatal error of its client.
///
/// librdkafka raises a fatal error on an idempotent producer whose state can no longer be trusted
/// (e.g. the broker lost acknowledged records, or a sequence gap); from then on every send fails at
/// once, for the life of the client. After a failed send, [`EventProducer::renew_if_fatal`] swaps
/// in a new client (a new producer id): records not acknowledged are sent again by their caller,
/// which the consumers' de-duplication on the event id absorbs.
#[derive(Clone)]
pub struct EventProducer {
    config: ClientConfig,
    current: std::sync::Arc<std::sync::Mutex<FutureProducer>>,
}

impl EventProducer {
    /// The client in use (a cheap handle).
    pub fn current(&self) -> FutureProducer {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the client when it has failed fatally; true if it did. When a new client cannot
    /// be created, the old one stays and the next failed send tries again.
    pub fn renew_if_fatal(&self) -> bool {
        use rdkafka::producer::Producer as _;
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((code, _)) = current.client().fatal_error() else { return false };
        match self.config.create() {
            Ok(renewed) => {
                let failed = std::mem::replace(&mut *current, renewed);
                // Dropping a client purges and joins its threads (blocking): not on this one.
                std::thread::spawn(move || drop(failed));
                tracing::error!(error = ?code, "the Kafka producer failed fatally and was replaced; unacknowledged records are sent again");
                true
            }
            Err(err) => {
                tracing::error!(error = ?code, renewal = %err, "the Kafka producer failed fatally and could not be replaced yet");
                false
            }
        }
    }
}

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic_of(topic: &str) -> String {
    format!("{topic}.DLT")
}

/// Records a consumer cannot use go to the dead-letter topic (`<topic>.DLT`) with the reason and
/// their origin as headers: at once when they cannot be decoded, after `max_attempts` tries when
/// the database rejects them (a data or constraint error: the same record would fail every time).
/// Anything else (database down) is the caller's to retry in place: nothing is skipped.
pub struct DeadLetters {
    pub producer: EventProducer,
    /// The consumer group, named in the `dlt-group` header.
    pub group: String,
    /// Tries of a record the database rejects before it is dead-lettered.
    pub max_attempts: u32,
    pub metrics: std::sync::Arc<crate::metrics::Registry>,
    /// Counted once per dead-lettered record, e.g. `analytics_events_total{result="dead_lettered"}`.
    pub series: &'static str,
}

impl DeadLetters {
    /// Runs `apply` until it succeeds; a record the database keeps rejecting is dead-lettered
    /// after `max_attempts` (then `Ok`: the next record goes on); a transient error is returned.
    pub async fn apply_or_dead_letter<F, Fut>(&self, record: &OwnedMessage, mut apply: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut attempt = 1;
        loop {
            let Err(err) = apply().await else { return Ok(()) };
            match rejected(&err) {
                Some(code) if attempt >= self.max_attempts => {
                    let reason = format!("the database rejects this event (SQLSTATE {code}) after {attempt} attempts");
                    return self.send(record, &reason).await;
                }
                Some(code) => {
                    tracing::warn!(attempt, sqlstate = %code, "the database rejected the event; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt)).min(Duration::from_secs(5))).await;
                    attempt += 1;
                }
                None => return Err(err),
            }
        }
    }

    /// Copies the record to the dead-letter topic with the reason and its origin as headers;
    /// `Ok` once the broker has it.
    #[tracing::instrument(skip_all, fields(partition = record.partition(), offset = record.offset()))]
    pub async fn send(&self, record: &OwnedMessage, reason: &str) -> anyhow::Result<()> {
        use rdkafka::message::{Header, OwnedHeaders};
        tracing::warn!(reason, "record sent to the dead-letter topic");
        let (partition, offset) = (record.partition().to_string(), record.offset().to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "dlt-reason", value: Some(reason) })
            .insert(Header { key: "dlt-group", value: Some(self.group.as_str()) })
            .insert(Header { key: "dlt-original-topic", value: Some(record.topic()) })
            .insert(Header { key: "dlt-original-partition", value: Some(partition.as_str()) })
            .insert(Header { key: "dlt-original-offset", value: Some(offset.as_str()) });
        let topic = dead_letter_topic_of(record.topic());
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&topic).payload(record.payload().unwrap_or_default()).headers(headers);
        if let Some(key) = record.key() {
            out = out.key(key);
        }
        let sent = self.producer.current().send(out, Duration::from_secs(10)).await;
        if let Err((err, _)) = sent {
            // The caller retries the record, on a new client if this one failed for good.
            self.producer.renew_if_fatal();
            return Err(anyhow::Error::new(err).context("dead-letter publish failed"));
        }
        self.metrics.inc(self.series);
        Ok(())
    }
}

/// The SQLSTATE of an error the database will raise again for the same record: a data exception
/// (class 22, e.g. a date out of range, a NUL in text) or an integrity constraint violation (23).
fn rejected(err: &anyhow::Error) -> Option<String> {
    let code = crate::db::database_error(err)?.as_database_error()?.code()?.into_owned();
    (code.starts_with("22") || code.starts_with("23")).then_some(code)
}

/// Reads a UTF-8 header of a record.
pub fn header<'a>(record: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    record.headers()?.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}
