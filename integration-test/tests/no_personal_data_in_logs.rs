//! Every service's log output during a full patient lifecycle, captured and scanned: no name,
//! email or address of a test patient may appear. A suite of its own: it owns the process-wide
//! log subscriber.

mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use dev_stack::kafka::Kafka;
use serde_json::json;
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_never_contain_names_emails_or_addresses() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug,h2=info,hyper=info,hyper_util=info,tower=info,reqwest=info,rdkafka=info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let topic = unique_topic();
    let args = kafka_args(&Kafka::shared_for_tests().bootstrap_servers(), &topic);
    let (_billing, grpc) = spawn_billing(args.clone()).await;
    let patients = spawn_patients(&grpc, args.clone()).await;
    let analytics = spawn_analytics(None, args.clone()).await;
    // The scheduling side too: appointment-service's replica, and notification-service, which
    // handles names and addresses to mail them.
    let appointment_topic = format!("appointment-{}", uuid::Uuid::new_v4().simple());
    let appointments = spawn_appointments(args.clone(), &appointment_topic).await;
    let mailpit = dev_stack::mailpit::Mailpit::start_ephemeral().unwrap();
    let _notifications = spawn_notifications(None, args.clone(), &appointment_topic, mailpit.smtp_port(), |_| {}).await;
    let client = client().await;
    let base = format!("http://127.0.0.1:{}", patients.port);

    let id = create_patient(patients.port, &patient_body(1)).await;
    let second = create_patient(patients.port, &patient_body(2)).await;
    let starts = chrono::Utc::now() + chrono::Duration::days(3);
    let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let booking = json!({"patientId": second, "clinicianId": uuid::Uuid::new_v4(), "startsAt": at(starts),
                         "endsAt": at(starts + chrono::Duration::minutes(30))});
    eventually(Duration::from_secs(30), "a booking for the second patient", || async {
        let resp =
            client.post(format!("http://127.0.0.1:{}/appointments", appointments.port)).json(&booking).send().await.unwrap();
        (resp.status() == 201).then_some(())
    })
    .await;
    let conflict = client.post(format!("{base}/patients")).json(&patient_body(1)).send().await.unwrap();
    assert_eq!(conflict.status(), 409);
    let mut invalid = patient_body(3);
    invalid["email"] = json!("journey3-at-example.org");
    assert_eq!(client.post(format!("{base}/patients")).json(&invalid).send().await.unwrap().status(), 400);
    let mut moved = patient_body(1);
    moved["address"] = json!("1 Secret Lane, Hiddenville");
    assert_eq!(client.put(format!("{base}/patients/{id}")).json(&moved).send().await.unwrap().status(), 200);
    let found = client.get(format!("{base}/patients?name=Journey%20Patient&email=journey2@example.org")).send().await.unwrap();
    assert_eq!(found.status(), 200);
    assert_eq!(client.get(format!("{base}/patients/{id}/bill")).send().await.unwrap().status(), 200);
    // Every log line of a request carries its W3C trace id.
    let traced = client
        .get(format!("{base}/patients/{id}"))
        .header("traceparent", "00-5ea1c0ffee5ea1c0ffee5ea1c0ffee00-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 200);
    assert_eq!(client.delete(format!("{base}/patients/{id}")).send().await.unwrap().status(), 204);
    produce_raw(&args.kafka_bootstrap_servers, &topic, "k", b"Journey Patient 9 journey9@example.org garbage").await;
    eventually(Duration::from_secs(60), "analytics and billing caught up", || async {
        let s = summary(&analytics).await;
        (s["patientsDeleted"] == 1 && s["patientsUpdated"] == 1).then_some(())
    })
    .await;
    // The second patient's welcome and booking mails went out (with their name and address).
    eventually(Duration::from_secs(60), "the second patient's mails", || async {
        (mails(&mailpit, Some("journey2@example.org")).await.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("patient created") && logs.contains("billing account ready"), "the capture works");
    assert!(logs.contains("dead-letter"), "the garbage record was handled and logged");
    assert!(logs.contains("appointment booked") && logs.contains("mail attempt"), "the scheduling side logged");
    let traced: Vec<&str> =
        logs.lines().filter(|l| l.contains("trace_id") && l.contains("5ea1c0ffee5ea1c0ffee5ea1c0ffee00")).collect();
    assert!(traced.iter().any(|l| l.contains("/patients/{id}")), "the request's log lines carry its trace id: {traced:?}");
    let secrets = [
        "Journey Patient",
        "journey1@example.org",
        "journey2@example.org",
        "journey3-at-example.org",
        "journey9@example.org",
        "Journey Road",
        "Secret Lane",
        "Hiddenville",
    ];
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret:?} leaked into the logs");
    }
    // Nor any token: patient-service's own one for billing included (a JWT starts with `eyJ`).
    assert!(!logs.contains("eyJ"), "a bearer token reached the logs");
    assert!(!logs.contains("ms-api-dev-secret"), "the client secret reached the logs");

    // Nor in what the database keeps: the audit trail, and the outbox once it was published.
    eventually(Duration::from_secs(30), "every outbox row published", || async {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&patients.db).await.unwrap();
        (unsent == 0).then_some(())
    })
    .await;
    let with_payload: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE payload IS NOT NULL").fetch_one(&patients.db).await.unwrap();
    assert_eq!(with_payload, 0, "published outbox rows keep their payload");
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM audit_log a").fetch_all(&patients.db).await.unwrap();
    assert!(audit.len() >= 8, "every access was audited: {audit:?}");
    let outbox: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(o)::text FROM outbox o").fetch_all(&patients.db).await.unwrap();
    for row in audit.iter().chain(&outbox) {
        for secret in secrets {
            assert!(!row.contains(secret), "{secret:?} kept in {row}");
        }
    }
}
