//! The services spawned in-process on real PostgreSQL and Kafka, plus a plain Kafka client for
//! reading and writing the topics directly.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use common::{kafka::KafkaArgs, secret::Secret};
use dev_stack::{
    keycloak::{Keycloak, REALM, SERVICE_CLIENT},
    PgCluster,
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::OwnedMessage,
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message,
};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use verifier::{client::ClientArgs, settings::OidcArgs};

/// The test Keycloak's realm, trusted by every service under test (SPEC §10).
pub fn oidc() -> OidcArgs {
    OidcArgs::for_issuer(Keycloak::shared_for_tests().issuer(REALM))
}

/// A token of the realm's service account (every role).
pub async fn service_token() -> String {
    Keycloak::shared_for_tests().service_token().await.unwrap()
}

/// A client that sends the service account's token on every request, for calling the services
/// directly.
pub async fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {}", service_token().await).parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// A service running in this process: stop it gracefully or kill it outright.
pub struct Running {
    pub port: u16,
    pub db: PgPool,
    pub db_url: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// SIGTERM-like: in-flight work finishes, offsets are committed, the producer is flushed.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// SIGKILL-like: the task is dropped where it stands.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn spawn<F>(run: impl FnOnce(CancellationToken) -> F, port: u16, db: PgPool, db_url: String) -> Running
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(stop.clone()));
    Running { port, db, db_url, stop, task }
}

pub async fn fresh_db(prefix: &str) -> (String, PgPool) {
    let url = PgCluster::shared_for_tests().fresh_database(prefix).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    (url, pool)
}

/// The given database (a second replica, or a restarted instance, on its predecessor's), else
/// a fresh one.
async fn given_or_fresh_db(db_url: Option<String>, prefix: &str) -> (String, PgPool) {
    match db_url {
        Some(url) => (url.clone(), PgPool::connect(&url).await.unwrap()),
        None => fresh_db(prefix).await,
    }
}

/// A topic name of its own for one test.
pub fn unique_topic() -> String {
    format!("patient-{}", uuid::Uuid::new_v4().simple())
}

pub fn kafka_args(bootstrap: &str, topic: &str) -> KafkaArgs {
    let mut args = KafkaArgs::new(bootstrap, topic);
    args.kafka_delivery_timeout_ms = 3_000;
    args
}

pub async fn spawn_billing(kafka: KafkaArgs) -> (Running, String) {
    spawn_billing_with(kafka, |_| {}).await
}

/// The same, with its settings adjusted first (e.g. a short PENDING window).
pub async fn spawn_billing_with(
    kafka: KafkaArgs,
    tweak: impl FnOnce(&mut billing_service::config::Settings),
) -> (Running, String) {
    spawn_billing_on(None, kafka, tweak).await
}

/// billing-service on the given database (another replica's), else a fresh one.
pub async fn spawn_billing_on(
    db_url: Option<String>,
    kafka: KafkaArgs,
    tweak: impl FnOnce(&mut billing_service::config::Settings),
) -> (Running, String) {
    let (url, db) = given_or_fresh_db(db_url, "billing").await;
    let mut settings = billing_service::config::Settings::for_database(&url, oidc());
    settings.kafka = kafka;
    tweak(&mut settings);
    let app = billing_service::startup::Application::build(settings).await.unwrap();
    let grpc = format!("http://127.0.0.1:{}", app.grpc_port());
    let port = app.http_port();
    (spawn(|stop| app.run_until_stopped(async move { stop.cancelled().await }), port, db, url), grpc)
}

pub async fn spawn_patients(billing_grpc: &str, kafka: KafkaArgs) -> Running {
    spawn_patients_with(billing_grpc, kafka, |_| {}).await
}

/// The same, with its settings adjusted first (e.g. a short billing deadline).
pub async fn spawn_patients_with(
    billing_grpc: &str,
    kafka: KafkaArgs,
    tweak: impl FnOnce(&mut patient_service::config::Settings),
) -> Running {
    spawn_patients_on(None, billing_grpc, kafka, tweak).await
}

/// patient-service on the given database (another replica's), else a fresh one.
pub async fn spawn_patients_on(
    db_url: Option<String>,
    billing_grpc: &str,
    kafka: KafkaArgs,
    tweak: impl FnOnce(&mut patient_service::config::Settings),
) -> Running {
    let (url, db) = given_or_fresh_db(db_url, "patients").await;
    let client = ClientArgs { client_id: SERVICE_CLIENT.0.into(), client_secret: Secret::new(SERVICE_CLIENT.1) };
    let mut settings = patient_service::config::Settings::for_database(&url, billing_grpc, oidc(), client);
    settings.kafka = kafka;
    tweak(&mut settings);
    let app = patient_service::startup::Application::build(settings).await.unwrap();
    let port = app.port();
    spawn(|stop| app.run_until_stopped(async move { stop.cancelled().await }), port, db, url)
}

/// analytics-service on the given database (a restarted instance reuses its predecessor's).
pub async fn spawn_analytics(db_url: Option<String>, kafka: KafkaArgs) -> Running {
    spawn_analytics_with(db_url, kafka, |_| {}).await
}

/// The same, with its settings adjusted first (e.g. another consumer group).
pub async fn spawn_analytics_with(
    db_url: Option<String>,
    kafka: KafkaArgs,
    tweak: impl FnOnce(&mut analytics_service::config::Settings),
) -> Running {
    let (url, db) = given_or_fresh_db(db_url, "analytics").await;
    let mut settings = analytics_service::config::Settings::for_test(&url, kafka, oidc());
    tweak(&mut settings);
    let app = analytics_service::startup::Application::build(settings).await.unwrap();
    let port = app.port();
    spawn(|stop| app.run_until_stopped(async move { stop.cancelled().await }), port, db, url)
}

/// appointment-service following `kafka`'s patient topic, publishing to `appointment_topic`.
pub async fn spawn_appointments(kafka: KafkaArgs, appointment_topic: &str) -> Running {
    let (url, db) = fresh_db("appointments").await;
    let mut settings = appointment_service::config::Settings::for_test(&url, kafka, oidc());
    settings.appointment_topic = appointment_topic.to_owned();
    let app = appointment_service::startup::Application::build(settings).await.unwrap();
    let port = app.port();
    spawn(|stop| app.run_until_stopped(async move { stop.cancelled().await }), port, db, url)
}

/// notification-service on the given database (a restarted instance reuses its predecessor's),
/// following `kafka`'s patient topic and `appointment_topic`, mailing through `smtp_port`.
pub async fn spawn_notifications(
    db_url: Option<String>,
    kafka: KafkaArgs,
    appointment_topic: &str,
    smtp_port: u16,
    tweak: impl FnOnce(&mut notification_service::config::Settings),
) -> Running {
    let (url, db) = given_or_fresh_db(db_url, "notifications").await;
    let mut settings = notification_service::config::Settings::for_test(&url, kafka, smtp_port);
    settings.appointment_topic = appointment_topic.to_owned();
    tweak(&mut settings);
    let app = notification_service::startup::Application::build(settings).await.unwrap();
    let port = app.port();
    spawn(|stop| app.run_until_stopped(async move { stop.cancelled().await }), port, db, url)
}

/// One message in the mail server.
#[derive(Debug, Clone)]
pub struct Mail {
    pub subject: String,
    pub message_id: String,
    pub to: String,
}

/// Every message the mail server holds for `to` (all of them when None).
pub async fn mails(mailpit: &dev_stack::mailpit::Mailpit, to: Option<&str>) -> Vec<Mail> {
    let url = format!("{}/api/v1/messages?limit=100000", mailpit.http_url());
    let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Mail {
            subject: m["Subject"].as_str().unwrap_or_default().to_owned(),
            message_id: m["MessageID"].as_str().unwrap_or_default().to_owned(),
            to: m["To"][0]["Address"].as_str().unwrap_or_default().to_owned(),
        })
        .filter(|m| to.is_none_or(|t| m.to.eq_ignore_ascii_case(t)))
        .collect()
}

pub fn patient_body(n: usize) -> Value {
    json!({
        "name": format!("Journey Patient {n}"),
        "email": format!("journey{n}@example.org"),
        "address": format!("{n} Journey Road, Testville"),
        "dateOfBirth": "1980-02-03",
        "registeredDate": "2024-03-04"
    })
}

pub async fn create_patient(port: u16, body: &Value) -> String {
    let resp = client().await.post(format!("http://127.0.0.1:{port}/patients")).json(body).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
}

pub async fn summary(analytics: &Running) -> Value {
    let url = format!("http://127.0.0.1:{}/analytics/summary", analytics.port);
    client().await.get(url).send().await.unwrap().json().await.unwrap()
}

/// The `sub` of a token Keycloak just issued us (read, not verified: the services verify it).
pub fn subject(token: &str) -> String {
    dev_stack::tokens::decode_parts(token).1["sub"].as_str().unwrap().to_owned()
}

/// Polls `check` until it yields `Some`, failing after `limit`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(limit: Duration, what: &str, mut check: impl FnMut() -> F) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `n` records of `topic` from the beginning with a fresh consumer group.
pub async fn read_records(bootstrap: &str, topic: &str, n: usize, limit: Duration) -> Vec<OwnedMessage> {
    read_until(bootstrap, topic, limit, |records| records.len() >= n).await
}

/// Reads `topic` from the beginning with a fresh consumer group until `enough` holds for what
/// arrived, failing after `limit`.
pub async fn read_until(
    bootstrap: &str,
    topic: &str,
    limit: Duration,
    enough: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !enough(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            // The topic is created by its first record, which may come after this subscription.
            Ok(Err(e)) if topic_not_there_yet(&e) => {}
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("{topic}: what arrived within {limit:?} ({} records) was not enough", out.len()),
        }
    }
    out
}

fn topic_not_there_yet(err: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{UnknownTopic, UnknownTopicOrPartition};
    matches!(err.rdkafka_error_code(), Some(UnknownTopicOrPartition | UnknownTopic))
}

/// A service's `/metrics` text.
pub async fn metrics_text(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
}

/// Produces one raw record and waits for the broker's acknowledgement.
pub async fn produce_raw(bootstrap: &str, topic: &str, key: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    producer.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// Produces one record without a key (as the reference producer does).
pub async fn produce_unkeyed(bootstrap: &str, topic: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(payload);
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

pub fn decode(record: &OwnedMessage) -> proto::events::PatientEvent {
    use prost::Message as _;
    proto::events::PatientEvent::decode(record.payload().unwrap()).unwrap()
}

pub fn key(record: &OwnedMessage) -> String {
    String::from_utf8(record.key().unwrap().to_vec()).unwrap()
}

/// A fresh directory for a test's artifacts (screenshots), under `$TEST_ARTIFACTS_DIR`.
pub fn artifacts_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("TEST_ARTIFACTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("patient-platform-test-artifacts"))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The platform's four real binaries (billing, patients, analytics, gateway) on free ports, as
/// `cargo xtask up` wires them, in front of `pg`, a broker and the shared Keycloak; `env` is
/// added to every service's environment. Not started yet: see [`RealServices::start`].
pub struct RealServices {
    pub dirs: dev_stack::services::ServiceDirs,
    pub specs: Vec<dev_stack::services::ServiceSpec>,
    pub gateway: String,
}

/// The binaries' names, in start order.
pub const SERVICES: [&str; 4] = ["billing-service", "patient-service", "analytics-service", "gateway"];

impl RealServices {
    pub fn new(pg: &dev_stack::PgCluster, kafka_bootstrap: String, env: &[(&str, String)], state_prefix: &str) -> Self {
        use dev_stack::{keycloak::Keycloak, net::free_port, services};
        let kc = Keycloak::shared_for_tests();
        let ports = services::ServicePorts {
            patient: free_port().unwrap(),
            billing_grpc: free_port().unwrap(),
            billing_http: free_port().unwrap(),
            analytics: free_port().unwrap(),
            appointment: free_port().unwrap(),
            notification: free_port().unwrap(),
            gateway: free_port().unwrap(),
        };
        let url = |db: &str| pg.url(db);
        let infra = services::Infrastructure {
            database_url: &url,
            kafka_bootstrap,
            keycloak_port: kc.http_port(),
            realm: dev_stack::keycloak::REALM,
            // The suites that run the real binaries start the services of SERVICES only.
            smtp_port: ports.notification,
        };
        let mut specs = services::platform(ports, &infra);
        for spec in &mut specs {
            spec.env.push(("SEED_DEMO_DATA".into(), "false".into()));
            spec.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        }
        let state = dev_stack::fresh_test_dir(state_prefix);
        let dirs = services::ServiceDirs { run: state.join("run"), logs: state.join("logs"), bin: binaries() };
        Self { dirs, specs, gateway: format!("http://127.0.0.1:{}", ports.gateway) }
    }

    pub fn spec(&self, name: &str) -> &dev_stack::services::ServiceSpec {
        self.specs.iter().find(|s| s.name == name).unwrap()
    }

    /// Starts one service (tied to this test process) and waits until it is ready.
    pub fn start(&self, name: &str) {
        let spec = self.spec(name);
        dev_stack::services::start_for_test(spec, &self.dirs).unwrap();
        dev_stack::services::wait_ready(spec, &self.dirs, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// The directory with the services' binaries: cargo puts them next to `deps/`, where this test
/// binary lives (`cargo xtask test` builds them first).
fn binaries() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    for name in SERVICES {
        assert!(
            dir.join(name).exists(),
            "{} is missing: run `cargo xtask test` (or `cargo build --workspace --bins` first)",
            dir.join(name).display()
        );
    }
    dir
}
