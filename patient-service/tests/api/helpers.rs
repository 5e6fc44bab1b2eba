//! `TestApp`: patient-service and billing-service spawned on port 0 against fresh databases,
//! trusting the test Keycloak's realm; its client calls with the service account's token.

use billing_service::startup::Application as Billing;
use common::secret::Secret;
use dev_stack::{
    keycloak::{Keycloak, REALM, SERVICE_CLIENT},
    PgCluster,
};
use patient_service::{config::Settings, startup::Application};
use prost::Message;
use proto::events::PatientEvent;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::{sync::oneshot, task::JoinHandle};
use verifier::{client::ClientArgs, settings::OidcArgs};

/// The test Keycloak's realm, as every service is told to trust it.
pub fn oidc() -> OidcArgs {
    OidcArgs::for_issuer(Keycloak::shared_for_tests().issuer(REALM))
}

/// The dev realm's service client, as patient-service calls billing.
pub fn service_client() -> ClientArgs {
    ClientArgs { client_id: SERVICE_CLIENT.0.into(), client_secret: Secret::new(SERVICE_CLIENT.1) }
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
    pub billing_db: PgPool,
    /// Sends the service account's token (every role).
    pub client: reqwest::Client,
    billing: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

/// A running billing-service on its own fresh database.
pub async fn spawn_billing() -> (String, PgPool, oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let url = PgCluster::shared_for_tests().fresh_database("billing").await.unwrap();
    let app = Billing::build(billing_service::config::Settings::for_database(&url, oidc())).await.unwrap();
    let grpc = format!("http://127.0.0.1:{}", app.grpc_port());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (grpc, PgPool::connect(&url).await.unwrap(), stop, task)
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns both services; `tweak` adjusts patient-service's settings first.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let (grpc, billing_db, stop, task) = spawn_billing().await;
        let url = PgCluster::shared_for_tests().fresh_database("patients").await.unwrap();
        let mut settings = Settings::for_database(&url, grpc, oidc(), service_client());
        tweak(&mut settings);
        let app = Application::build(settings).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        Self {
            address,
            db: PgPool::connect(&url).await.unwrap(),
            billing_db,
            client: client_with(&Keycloak::shared_for_tests().service_token().await.unwrap()),
            billing: Some((stop, task)),
        }
    }

    /// Stops billing-service and waits until its port is closed.
    pub async fn stop_billing(&mut self) {
        let (stop, task) = self.billing.take().expect("billing is running");
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_patient(&self, body: &Value) -> reqwest::Response {
        self.client.post(self.url("/patients")).json(body).send().await.unwrap()
    }

    /// Creates a patient and returns its id (asserting the 201).
    pub async fn create_patient(&self, body: &Value) -> String {
        let resp = self.post_patient(body).await;
        assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    pub async fn patient_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM patients").fetch_one(&self.db).await.unwrap()
    }

    pub async fn billing_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM billing_accounts").fetch_one(&self.billing_db).await.unwrap()
    }

    /// Every outbox row, in order, decoded.
    pub async fn outbox_events(&self) -> Vec<PatientEvent> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox ORDER BY id").fetch_all(&self.db).await.unwrap();
        rows.iter().map(|p| PatientEvent::decode(p.as_slice()).unwrap()).collect()
    }
}

/// A valid create body whose email is unique per `n`.
pub fn patient_body(n: usize) -> Value {
    json!({
        "name": format!("Test Patient {n}"),
        "email": format!("patient{n}@example.com"),
        "address": format!("{n} Test Street, Springfield"),
        "dateOfBirth": "1985-06-15",
        "registeredDate": "2024-01-10"
    })
}

/// Asserts an RFC 9457 problem response with `status` and returns its body.
pub async fn assert_problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    body
}
