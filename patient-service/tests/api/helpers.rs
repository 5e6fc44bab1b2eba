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
    billing: Option<Running>,
    /// Where patient-service calls billing; a restarted billing comes back there.
    billing_port: u16,
    billing_db_url: String,
}

type Running = (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>);

/// billing-service on `database_url`, its gRPC API on `port` (0: any free one).
async fn start_billing(
    database_url: &str,
    port: u16,
    tweak: impl FnOnce(&mut billing_service::config::Settings),
) -> (u16, Running) {
    let mut settings = billing_service::config::Settings::for_database(database_url, oidc());
    settings.grpc_addr.set_port(port);
    tweak(&mut settings);
    let app = Billing::build(settings).await.unwrap();
    let port = app.grpc_port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (port, (stop, task))
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns both services; `tweak` adjusts patient-service's settings first.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_with_billing(|_| {}, tweak).await
    }

    /// Spawns both services, adjusting billing-service's settings and patient-service's first.
    pub async fn spawn_with_billing(
        billing_tweak: impl FnOnce(&mut billing_service::config::Settings),
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let billing_db_url = PgCluster::shared_for_tests().fresh_database("billing").await.unwrap();
        let (port, billing) = start_billing(&billing_db_url, 0, billing_tweak).await;
        let grpc = format!("http://127.0.0.1:{port}");
        let url = PgCluster::shared_for_tests().fresh_database("patients").await.unwrap();
        let mut settings = Settings::for_database(&url, grpc.clone(), oidc(), service_client());
        tweak(&mut settings);
        let app = Application::build(settings).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        Self {
            address,
            db: PgPool::connect(&url).await.unwrap(),
            billing_db: PgPool::connect(&billing_db_url).await.unwrap(),
            billing_db_url,
            client: client_with(&Keycloak::shared_for_tests().service_token().await.unwrap()),
            billing: Some(billing),
            billing_port: port,
        }
    }

    /// Stops billing-service and waits until its port is closed.
    pub async fn stop_billing(&mut self) {
        let (stop, task) = self.billing.take().expect("billing is running");
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// Starts billing-service again on its old port and database.
    pub async fn restart_billing(&mut self) {
        assert!(self.billing.is_none(), "billing is stopped");
        self.billing = Some(start_billing(&self.billing_db_url, self.billing_port, |_| {}).await.1);
    }

    /// A series of the service's `/metrics` (every series we read is exported from the start).
    pub async fn metric(&self, series: &str) -> i64 {
        let text = reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {series} missing in:\n{text}"))
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
