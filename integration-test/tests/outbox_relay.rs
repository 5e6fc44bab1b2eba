//! The outbox relay and the dead-letter writer when the broker refuses: one event it keeps refusing
//! does not hold up the others, and a producer that failed fatally is replaced instead of failing
//! every send until a restart.

// The one unsafe call is librdkafka's own fault injection (`rd_kafka_test_fatal_error`).
#![allow(unsafe_code)]

mod support;

use std::time::Duration;

use common::{
    kafka::{dead_letter_topic_of, KafkaArgs},
    metrics::Registry,
    outbox::RelayArgs,
};
use dev_stack::kafka::Kafka;
use rdkafka::{message::OwnedMessage, producer::Producer as _, Message, Timestamp};
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn broker() -> String {
    Kafka::shared_for_tests().bootstrap_servers()
}

/// Makes librdkafka treat `producer` as failed for good, as after a broker lost acknowledged
/// records: from here on its every send fails at once.
fn fail_fatally(producer: &rdkafka::producer::FutureProducer) {
    use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
    // SAFETY: the client pointer is valid while `producer` lives (borrowed for this call); the
    // reason is a NUL-terminated static string; librdkafka copies what it keeps.
    let err = unsafe {
        rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            c"injected by the test".as_ptr(),
        )
    };
    assert_eq!(err, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    assert!(producer.client().fatal_error().is_some());
}

/// An unsent outbox row of `patient` with these payload bytes.
async fn insert_event(db: impl sqlx::PgExecutor<'_>, patient: Uuid, payload: &[u8]) {
    sqlx::query("INSERT INTO outbox (event_id, patient_id, event_type, payload) VALUES ($1, $2, 'PATIENT_CREATED', $3)")
        .bind(Uuid::new_v4())
        .bind(patient)
        .bind(payload)
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_event_the_broker_keeps_refusing_does_not_hold_up_the_others() {
    let topic = unique_topic();
    let (_billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    // Small batches, so the other events take many batches, each with the refused one in it.
    let patients = spawn_patients_with(&grpc, kafka_args(&broker(), &topic), |s| {
        s.relay = RelayArgs { outbox_batch_size: 10, ..RelayArgs::eager() };
    })
    .await;

    // Over the producer's 1 MB message limit: refused every time it is tried. It is the oldest
    // row, so every batch claims it first.
    let stuck = Uuid::new_v4();
    let mut tx = patients.db.begin().await.unwrap();
    insert_event(&mut *tx, stuck, &vec![7u8; 2_000_000]).await;
    let others: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    for id in &others {
        insert_event(&mut *tx, *id, b"x").await;
    }
    tx.commit().await.unwrap();

    // Ten batches of nine: at once when a batch that published something is followed at once;
    // over a minute when every batch that also failed backs off (250 ms doubling to 10 s).
    let records = read_records(&broker(), &topic, others.len(), Duration::from_secs(20)).await;
    let mut keys: Vec<String> = records.iter().map(key).collect();
    keys.sort();
    let mut expected: Vec<String> = others.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(keys, expected, "every other patient's event, once each");

    // (A record can be read before the relay's commit marks it sent.)
    eventually(Duration::from_secs(20), "only the refused event waits, never marked sent", || async {
        let unsent: Vec<Uuid> =
            sqlx::query_scalar("SELECT patient_id FROM outbox WHERE sent_at IS NULL").fetch_all(&patients.db).await.unwrap();
        (unsent == [stuck]).then_some(())
    })
    .await;

    // Alone, it is tried again every second (a refusal, not an outage): eight more tries take
    // about 8 s, where a backoff doubling from 250 ms would take 25 s.
    let before = failed_publishes(patients.port).await;
    eventually(Duration::from_secs(20), "eight more tries of the refused event", || async {
        (failed_publishes(patients.port).await >= before + 8).then_some(())
    })
    .await;
}

#[tokio::test]
async fn published_rows_past_their_retention_are_deleted_and_nothing_else() {
    let topic = unique_topic();
    let (_billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    // The service's own relay (as the service's database role), purging every second.
    let patients = spawn_patients_with(&grpc, kafka_args(&broker(), &topic), |s| {
        s.relay = RelayArgs { outbox_retention_hours: 1, outbox_purge_every_secs: 1, ..RelayArgs::eager() };
    })
    .await;

    // The oldest row: an event the broker refuses every time, unsent for three hours.
    let stuck = Uuid::new_v4();
    insert_event(&patients.db, stuck, &vec![7u8; 2_000_000]).await;
    sqlx::query("UPDATE outbox SET created_at = now() - interval '3 hours'").execute(&patients.db).await.unwrap();
    // More rows past the retention than one purge statement deletes, then rows within it.
    let published = |count: i32, ago: &'static str| {
        sqlx::query(
            "INSERT INTO outbox (event_id, patient_id, event_type, payload, created_at, sent_at)
             SELECT gen_random_uuid(), gen_random_uuid(), 'PATIENT_UPDATED', NULL, now() - $2::interval, now() - $2::interval
             FROM generate_series(1, $1)",
        )
        .bind(count)
        .bind(ago)
        .execute(&patients.db)
    };
    published(12_000, "2 hours").await.unwrap();
    published(10, "50 minutes").await.unwrap();

    eventually(Duration::from_secs(30), "published rows older than an hour deleted", || async {
        let old: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at < now() - interval '1 hour'")
            .fetch_one(&patients.db)
            .await
            .unwrap();
        (old == 0).then_some(())
    })
    .await;
    let left: Vec<(Uuid, bool)> =
        sqlx::query_as("SELECT patient_id, sent_at IS NULL FROM outbox ORDER BY id").fetch_all(&patients.db).await.unwrap();
    assert_eq!(left.len(), 11, "the unsent row and the ten within the retention stay");
    assert_eq!(left[0], (stuck, true), "an unsent row is never deleted, however old");
    assert!(left[1..].iter().all(|(_, unsent)| !unsent));
    let text = metrics_text(patients.port).await;
    assert!(text.lines().any(|l| l == "outbox_rows_purged_total 12000"), "{text}");
}

/// The relay's `outbox_events_total{result="failed"}`.
async fn failed_publishes(port: u16) -> u64 {
    let text = metrics_text(port).await;
    let line = text.lines().find(|l| l.starts_with("outbox_events_total{result=\"failed\"}")).expect("the series is exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_relay_replaces_a_producer_that_failed_fatally() {
    let topic = unique_topic();
    let (_billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    // The service's own relay is off; this test runs one on its database, holding its producer.
    let patients = spawn_patients(&grpc, KafkaArgs::disabled()).await;
    let relay = RelayArgs::eager()
        .relay(patient_service::outbox::OUTBOX, &patients.db, &kafka_args(&broker(), &topic), &Registry::new())
        .unwrap()
        .expect("Kafka enabled");
    let producer = relay.producer.clone();
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));

    // One patient's two events, on either side of the failure: in order on its partition.
    let patient = Uuid::new_v4();
    insert_event(&patients.db, patient, b"first").await;
    read_records(&broker(), &topic, 1, Duration::from_secs(30)).await;

    fail_fatally(&producer.current());
    insert_event(&patients.db, patient, b"second").await;
    let records = read_records(&broker(), &topic, 2, Duration::from_secs(30)).await;
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload().unwrap()).collect();
    assert_eq!(payloads, [&b"first"[..], &b"second"[..]]);
    assert!(records.iter().all(|r| key(r) == patient.to_string()));
    assert!(producer.current().client().fatal_error().is_none(), "a new client took over");

    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_dead_letter_writer_replaces_a_producer_that_failed_fatally() {
    let topic = unique_topic();
    let metrics = Registry::new();
    // The topics exist first and the new client has room to start on a loaded machine.
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_delivery_timeout_ms = 30_000;
    args.ensure_topics(&[&topic, &dead_letter_topic_of(&topic)]).await;
    let dead_letters = args.dead_letters("relay-test", metrics.clone(), "dead_lettered_total").unwrap();
    let record = OwnedMessage::new(
        Some(b"undecodable".to_vec()),
        Some(b"key-1".to_vec()),
        topic.clone(),
        Timestamp::NotAvailable,
        0,
        41,
        None,
    );

    fail_fatally(&dead_letters.producer.current());
    assert!(dead_letters.send(&record, "cannot be decoded").await.is_err(), "the failed client refuses");
    // The consumer loop retries the record in place; the next try goes out on a new client.
    dead_letters.send(&record, "cannot be decoded").await.expect("sent on a new client");

    let dead = read_records(&broker(), &dead_letter_topic_of(&topic), 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload(), Some(&b"undecodable"[..]));
    assert_eq!(common::kafka::header(&dead[0], "dlt-original-offset"), Some("41"));
    assert_eq!(metrics.get("dead_lettered_total"), 1);
}
