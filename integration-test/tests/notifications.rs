//! notification-service against a real mail server (Mailpit) and real Kafka: exactly one mail per
//! event when the service is killed mid-stream and its events are delivered again, and nothing
//! lost nor sent twice while the mail server is down.

mod support;

use std::{collections::HashMap, time::Duration};

use dev_stack::{kafka::Kafka, mailpit::Mailpit};
use prost::Message as _;
use proto::events::PatientEvent;
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use support::*;
use uuid::Uuid;

/// `n` PATIENT_CREATED events of new patients, each with its own address.
fn created(n: usize) -> Vec<PatientEvent> {
    (0..n)
        .map(|i| {
            let id = Uuid::new_v4();
            PatientEvent {
                patient_id: id.to_string(),
                name: format!("Mail Patient {i}"),
                email: format!("mail-{}@example.org", id.simple()),
                event_type: "PATIENT_CREATED".into(),
                event_id: Uuid::new_v4().to_string(),
                sequence: 1,
                ..Default::default()
            }
        })
        .collect()
}

async fn publish(bootstrap: &str, topic: &str, events: &[PatientEvent]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    for e in events {
        let payload = e.encode_to_vec();
        producer.send(FutureRecord::to(topic).key(&e.patient_id).payload(&payload), Duration::from_secs(10)).await.unwrap();
    }
}

/// Mails per recipient among `events`' patients, once the server holds at least `at_least`.
async fn delivered(mailpit: &Mailpit, events: &[PatientEvent], at_least: usize) -> HashMap<String, usize> {
    eventually(Duration::from_secs(60), "the mails arrive", || async {
        let all = mails(mailpit, None).await;
        let ours: Vec<&Mail> = all.iter().filter(|m| events.iter().any(|e| e.email == m.to)).collect();
        (ours.len() >= at_least).then(|| {
            let mut per: HashMap<String, usize> = HashMap::new();
            for m in ours {
                *per.entry(m.to.clone()).or_default() += 1;
            }
            per
        })
    })
    .await
}

#[tokio::test]
async fn killed_mid_stream_and_fed_the_same_events_again_it_mails_each_patient_once() {
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let args = kafka_args(&bootstrap, &topic);
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let events = created(40);

    let first = spawn_notifications(None, args.clone(), &appointments, mailpit.smtp_port(), |_| {}).await;
    publish(&bootstrap, &topic, &events).await;
    // Some mails are out: kill it mid-stream, as a crash would.
    delivered(&mailpit, &events, 5).await;
    let db_url = first.db_url.clone();
    first.kill().await;

    // The same events again (a producer's re-send, a rebalance's redelivery), then a new instance
    // on the same database and consumer group.
    publish(&bootstrap, &topic, &events).await;
    let second = spawn_notifications(Some(db_url), args, &appointments, mailpit.smtp_port(), |_| {}).await;
    let per = delivered(&mailpit, &events, events.len()).await;
    // Anything that would arrive twice has had time to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_after = delivered(&mailpit, &events, events.len()).await;
    assert_eq!(per, per_after);
    assert_eq!(per.len(), events.len(), "every patient got mail");
    assert!(per.values().all(|n| *n == 1), "one welcome each: {per:?}");
    let all = mails(&mailpit, None).await;
    let subjects: Vec<&str> = all.iter().filter(|m| per.contains_key(&m.to)).map(|m| m.subject.as_str()).collect();
    assert!(subjects.iter().all(|s| s.contains("Welcome")), "{subjects:?}");
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM mails WHERE status = 'SENT'").fetch_one(&second.db).await.unwrap();
    assert_eq!(sent, events.len() as i64);
    second.stop().await;
}

#[tokio::test]
async fn while_the_mail_server_is_down_mails_wait_and_then_arrive_once() {
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), |_| {}).await;

    mailpit.stop();
    let events = created(5);
    publish(&bootstrap, &topic, &events).await;
    // Recorded, tried, refused by the closed port, waiting: nothing lost, nothing sent.
    eventually(Duration::from_secs(60), "every mail was tried at least twice", || async {
        let tried: i64 =
            sqlx::query_scalar("SELECT count(*) FROM mails WHERE attempts >= 2 AND status IN ('PENDING', 'SENDING')")
                .fetch_one(&service.db)
                .await
                .unwrap();
        (tried == events.len() as i64).then_some(())
    })
    .await;
    let reasons: Vec<String> = sqlx::query_scalar("SELECT DISTINCT last_error FROM mails").fetch_all(&service.db).await.unwrap();
    assert_eq!(reasons, ["the mail server is unavailable"]);

    mailpit.restart().unwrap();
    let per = delivered(&mailpit, &events, events.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(delivered(&mailpit, &events, events.len()).await, per);
    assert!(per.len() == events.len() && per.values().all(|n| *n == 1), "{per:?}");
    service.stop().await;
}
