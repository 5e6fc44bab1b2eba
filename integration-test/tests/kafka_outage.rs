//! Kafka down: the API keeps answering, events wait in the outbox; Kafka back: every event
//! arrives, in order per patient, and analytics counts each exactly once.
//! A suite of its own because it stops its own broker.

mod support;

use std::{collections::HashMap, time::Duration};

use common::kafka::KafkaArgs;
use dev_stack::kafka::Kafka;
use serde_json::json;
use support::*;

#[tokio::test]
async fn events_created_while_kafka_is_down_all_arrive_in_order_once_it_is_back() {
    let mut kafka = Kafka::start_ephemeral().expect("Kafka starts");
    let topic = unique_topic();
    let args = kafka_args(&kafka.bootstrap_servers(), &topic);
    let (_billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    let patients = spawn_patients(&grpc, args.clone()).await;
    let analytics = spawn_analytics(None, args).await;
    let client = client().await;

    kafka.stop();
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(create_patient(patients.port, &patient_body(n)).await);
    }
    for (n, id) in ids.iter().take(10).enumerate() {
        let mut body = patient_body(n);
        body["address"] = json!("Moved during the outage");
        let resp = client.put(format!("http://127.0.0.1:{}/patients/{id}", patients.port)).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&patients.db).await.unwrap();
    assert_eq!(waiting, 60, "every event waits in the outbox while Kafka is down");

    kafka.start().expect("Kafka restarts");
    let records = read_records(&kafka.bootstrap_servers(), &topic, 60, Duration::from_secs(120)).await;

    let mut per_patient: HashMap<String, Vec<String>> = HashMap::new();
    for r in &records {
        per_patient.entry(key(r)).or_default().push(decode(r).event_type);
    }
    assert_eq!(per_patient.len(), 50);
    for (i, id) in ids.iter().enumerate() {
        let expected: &[&str] = if i < 10 { &["PATIENT_CREATED", "PATIENT_UPDATED"] } else { &["PATIENT_CREATED"] };
        assert_eq!(per_patient[id], expected, "events of patient {i} in order, none lost");
    }
    let s = eventually(Duration::from_secs(60), "analytics caught up", || async {
        let s = summary(&analytics).await;
        (s["patientsCreated"] == 50 && s["patientsUpdated"] == 10).then_some(s)
    })
    .await;
    assert_eq!(s["activePatients"], 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(summary(&analytics).await["patientsCreated"], 50, "exactly 50, not more");
}
