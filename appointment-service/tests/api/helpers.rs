//! `TestApp`: appointment-service spawned on port 0 against a fresh database and topics of its
//! own, trusting the test Keycloak's realm. Patients reach its replica the way they do in
//! production: as `PatientEvent`s on the patient topic.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use appointment_service::{config::Settings, startup::Application};
use chrono::{DateTime, Duration as Span, SecondsFormat, Utc};
use common::kafka::KafkaArgs;
use dev_stack::{
    kafka::Kafka,
    keycloak::{Keycloak, REALM},
    PgCluster,
};
use prost::Message as _;
use proto::events::PatientEvent;
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message as _,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use verifier::settings::OidcArgs;

pub fn oidc() -> OidcArgs {
    OidcArgs::for_issuer(Keycloak::shared_for_tests().issuer(REALM))
}

/// A client sending `token` on every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

pub struct TestApp {
    pub address: String,
    pub db: PgPool,
    /// Sends the service account's token (every role).
    pub client: reqwest::Client,
    pub bootstrap: String,
    pub patient_topic: String,
    pub appointment_topic: String,
    producer: FutureProducer,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        let url = PgCluster::shared_for_tests().fresh_database("appointments").await.unwrap();
        let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
        let suffix = Uuid::new_v4().simple().to_string();
        let patient_topic = format!("patient-{suffix}");
        let appointment_topic = format!("appointment-{suffix}");
        let mut kafka = KafkaArgs::new(&bootstrap, &patient_topic);
        kafka.kafka_delivery_timeout_ms = 3_000;
        let mut settings = Settings::for_test(&url, kafka, oidc());
        settings.appointment_topic = appointment_topic.clone();
        let app = Application::build(settings).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(app.run_until_stopped(async move { stopped.cancelled().await }));
        let producer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
        Self {
            address,
            db: PgPool::connect(&url).await.unwrap(),
            client: client_with(&Keycloak::shared_for_tests().service_token().await.unwrap()),
            bootstrap,
            patient_topic,
            appointment_topic,
            producer,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Publishes a patient's event on the patient topic, as patient-service's relay does.
    pub async fn publish_patient(&self, patient_id: Uuid, event_type: &str, sequence: u64) {
        let event = PatientEvent {
            patient_id: patient_id.to_string(),
            name: "Replica Patient".into(),
            email: "replica@example.org".into(),
            event_type: event_type.into(),
            event_id: Uuid::new_v4().to_string(),
            sequence,
            ..Default::default()
        };
        let key = patient_id.to_string();
        let payload = event.encode_to_vec();
        self.producer
            .send(FutureRecord::to(&self.patient_topic).key(&key).payload(&payload), Duration::from_secs(10))
            .await
            .unwrap();
    }

    /// A patient the replica knows: published, then waited for.
    pub async fn known_patient(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.publish_patient(id, "PATIENT_CREATED", 1).await;
        eventually(Duration::from_secs(30), "the replica has the patient", || async {
            let seen: Option<bool> =
                sqlx::query_scalar("SELECT deleted FROM patients WHERE id = $1").bind(id).fetch_optional(&self.db).await.unwrap();
            seen.map(|_| ())
        })
        .await;
        id
    }

    pub async fn book(&self, patient: Uuid, clinician: Uuid, starts: DateTime<Utc>, minutes: i64) -> reqwest::Response {
        self.client.post(self.url("/appointments")).json(&booking(patient, clinician, starts, minutes)).send().await.unwrap()
    }

    /// A command on an appointment, with `If-Match` when given.
    pub async fn command(&self, id: &str, command: &str, if_match: Option<&str>, body: Option<Value>) -> reqwest::Response {
        let mut req = self.client.post(self.url(&format!("/appointments/{id}/{command}")));
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// The first `n` events on the appointment topic.
    pub async fn appointment_events(&self, n: usize) -> Vec<(String, proto::appointments::AppointmentEvent)> {
        read_topic(&self.bootstrap, &self.appointment_topic, n)
            .await
            .into_iter()
            .map(|m| {
                let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap();
                (key, proto::appointments::AppointmentEvent::decode(m.payload().unwrap_or_default()).unwrap())
            })
            .collect()
    }

    pub async fn appointment_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM appointments").fetch_one(&self.db).await.unwrap()
    }

    pub async fn status_of(&self, id: &str) -> String {
        sqlx::query_scalar("SELECT status FROM appointments WHERE id = $1::uuid").bind(id).fetch_one(&self.db).await.unwrap()
    }

    /// (event_type, sequence, cancel_reason) of every outbox row of `id`, in order.
    pub async fn events_of(&self, id: &str) -> Vec<(String, u64, String)> {
        let rows: Vec<(String, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT event_type, payload FROM outbox WHERE appointment_id = $1::uuid ORDER BY id")
                .bind(id)
                .fetch_all(&self.db)
                .await
                .unwrap();
        let mut out = Vec::new();
        for (kind, payload) in rows {
            // A published row has lost its payload; the topic has it then.
            let (sequence, reason) = match payload {
                Some(p) => {
                    let e = proto::appointments::AppointmentEvent::decode(p.as_slice()).unwrap();
                    assert_eq!(e.event_type, kind);
                    (e.sequence, e.cancel_reason)
                }
                None => (0, String::new()),
            };
            out.push((kind, sequence, reason));
        }
        out
    }
}

/// The first `n` records of `topic`, from the beginning.
pub async fn read_topic(bootstrap: &str, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await;
        let m = m.unwrap_or_else(|_| panic!("only {} of {n} records on {topic}", out.len())).unwrap();
        out.push(m.detach());
    }
    out
}

/// A booking body.
pub fn booking(patient: Uuid, clinician: Uuid, starts: DateTime<Utc>, minutes: i64) -> Value {
    json!({"patientId": patient, "clinicianId": clinician, "startsAt": rfc3339(starts),
           "endsAt": rfc3339(starts + Span::minutes(minutes))})
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Ten minutes from now, in whole seconds: inside the hour before the start in which a patient
/// can be checked in.
pub fn soon() -> DateTime<Utc> {
    let soon = Utc::now() + Span::minutes(10);
    soon - Span::nanoseconds(i64::from(soon.timestamp_subsec_nanos()))
}

/// Tomorrow at `hour`:00 UTC.
pub fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    (Utc::now() + Span::days(1)).date_naive().and_hms_opt(hour, 0, 0).unwrap().and_utc()
}

/// A problem body with `status`, and its JSON.
pub async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

/// Polls `check` until it yields `Some`, failing after `limit`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(limit: Duration, what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
