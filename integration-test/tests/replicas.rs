//! Horizontal scale: two replicas of every service on one database each (as two pods of a
//! Deployment share theirs) — two gateways, two patient-services (two outbox relays), two
//! billing-services (one consumer group), two analytics-services (one consumer group). Patients
//! created and updated through both gateways reach the topic, in order per patient; analytics
//! counts each event exactly once (the relay is at-least-once, consumers de-duplicate); billing
//! opens and activates one account per patient. Then one replica of each is killed and the other
//! carries on alone, losing nothing.

mod support;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use dev_stack::{kafka::Kafka, keycloak::Keycloak};
use futures::future::join_all;
use rdkafka::message::OwnedMessage;
use serde_json::{json, Value};
use support::*;

const REALM: &str = "patient-management";

async fn gateway(patients: &Running) -> String {
    let kc = Keycloak::shared_for_tests();
    let settings = gateway::config::Settings::for_issuer(kc.issuer(REALM), format!("http://127.0.0.1:{}", patients.port));
    let app = gateway::startup::Application::build(settings).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    url
}

/// Creates patients `range` through `gateways` in turn, eight at a time; their ids.
async fn create(http: &reqwest::Client, token: &str, gateways: &[&str], range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    let numbers: Vec<usize> = range.collect();
    for batch in numbers.chunks(8) {
        let calls = batch.iter().map(|&n| {
            let gw = gateways[n % gateways.len()];
            http.post(format!("{gw}/api/patients")).bearer_auth(token).json(&patient_body(n)).send()
        });
        for resp in join_all(calls).await {
            let resp = resp.unwrap();
            assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
            ids.push(resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

#[tokio::test]
async fn two_replicas_of_every_service_share_the_work_and_one_carries_on_alone() {
    let topic = unique_topic();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let args = kafka_args(&bootstrap, &topic);
    let (billing_a, grpc_a) = spawn_billing(args.clone()).await;
    let (billing_b, grpc_b) = spawn_billing_on(Some(billing_a.db_url.clone()), args.clone(), |_| {}).await;
    let patients_a = spawn_patients(&grpc_a, args.clone()).await;
    let patients_b = spawn_patients_on(Some(patients_a.db_url.clone()), &grpc_b, args.clone(), |_| {}).await;
    let analytics_a = spawn_analytics(None, args.clone()).await;
    let analytics_b = spawn_analytics(Some(analytics_a.db_url.clone()), args).await;
    let (gw_a, gw_b) = (gateway(&patients_a).await, gateway(&patients_b).await);

    let token = Keycloak::shared_for_tests().client_token(REALM, "ms-api", "ms-api-dev-secret").await.unwrap();
    let http = reqwest::Client::new();
    let mut ids = create(&http, &token, &[&gw_a, &gw_b], 0..30).await;
    // Updates through the other gateway than the create's.
    for (n, id) in ids.iter().enumerate().take(10) {
        let gw = [&gw_b, &gw_a][n % 2];
        let mut body = patient_body(n);
        body["address"] = json!("Moved between replicas");
        let resp = http.put(format!("{gw}/api/patients/{id}")).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    // One replica of each dies (as a deleted pod whose grace ran out); the others carry on.
    patients_b.kill().await;
    billing_b.kill().await;
    analytics_b.kill().await;
    ids.extend(create(&http, &token, &[&gw_a], 30..45).await);

    // Every event reaches the topic, in order per patient, whichever relay published it. The
    // relay is at-least-once (SPEC: a relay killed between publishing and marking its rows sent
    // leaves them to the survivor, which publishes them again); consumers de-duplicate by id.
    let distinct = |records: &[OwnedMessage]| records.iter().map(|r| decode(r).event_id).collect::<HashSet<_>>().len();
    let records = read_until(&bootstrap, &topic, Duration::from_secs(120), |r| distinct(r) >= 55).await;
    assert_eq!(distinct(&records), 55, "45 creates and 10 updates");
    eprintln!("replicas: {} events published again after the kill", records.len() - 55);
    let mut seen = HashSet::new();
    let mut per_patient: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for r in &records {
        let event = decode(r);
        if seen.insert(event.event_id.clone()) {
            per_patient.entry(key(r)).or_default().push((event.sequence, event.event_type));
        }
    }
    assert_eq!(per_patient.len(), 45);
    for (i, id) in ids.iter().enumerate() {
        let expected: Vec<(u64, String)> = if i < 10 {
            vec![(1, "PATIENT_CREATED".into()), (2, "PATIENT_UPDATED".into())]
        } else {
            vec![(1, "PATIENT_CREATED".into())]
        };
        assert_eq!(per_patient[id], expected, "patient {i}: every event, in order");
    }

    // Analytics' group counted each event once, across the rebalance the kill caused.
    eventually(Duration::from_secs(90), "analytics caught up", || async {
        let s = summary(&analytics_a).await;
        (s["patientsCreated"] == 45 && s["patientsUpdated"] == 10).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = summary(&analytics_a).await;
    assert_eq!((s["patientsCreated"].as_u64(), s["patientsUpdated"].as_u64()), (Some(45), Some(10)), "exactly once");

    // Billing's replicas opened one account per patient, and its group activated each.
    eventually(Duration::from_secs(90), "every account active", || async {
        let (accounts, active): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'ACTIVE') FROM billing_accounts")
                .fetch_one(&billing_a.db)
                .await
                .unwrap();
        (accounts == 45 && active == 45).then_some(())
    })
    .await;
}
