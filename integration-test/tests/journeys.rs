//! Journey 1: a client_credentials token from Keycloak, then the whole patient lifecycle through
//! the gateway onto the real services (PostgreSQL, gRPC billing, Kafka, analytics).

mod support;

use std::time::Duration;

use dev_stack::{kafka::Kafka, keycloak::Keycloak};
use serde_json::{json, Value};
use support::*;

const REALM: &str = "patient-management";

#[tokio::test]
async fn token_then_rest_through_the_gateway_for_the_whole_lifecycle() {
    let kc = Keycloak::shared_for_tests();
    let args = kafka_args(&Kafka::shared_for_tests().bootstrap_servers(), &unique_topic());
    let (billing, grpc) = spawn_billing(args.clone()).await;
    let patients = spawn_patients(&grpc, args.clone()).await;
    let analytics = spawn_analytics(None, args).await;
    let mut settings = gateway::config::Settings::for_issuer(kc.issuer(REALM), format!("http://127.0.0.1:{}", patients.port));
    settings.analytics_service_url = format!("http://127.0.0.1:{}", analytics.port);
    let app = gateway::startup::Application::build(settings).await.unwrap();
    let gw = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));

    let token = kc.client_token(REALM, "ms-api", "ms-api-dev-secret").await.unwrap();
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| client.request(method, format!("{gw}{path}")).bearer_auth(&token);

    let created = call(reqwest::Method::POST, "/api/patients").json(&patient_body(1)).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/patients/{id}"), "Location is usable through the gateway");

    let listed = call(reqwest::Method::GET, "/api/patients?page=0&size=10").send().await.unwrap();
    assert_eq!(listed.headers()["x-total-count"], "1");
    assert!(listed.headers()["link"].to_str().unwrap().contains("</api/patients?page=0&size=10>"));
    let got: Value = call(reqwest::Method::GET, &location).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["email"], "journey1@example.org");

    let mut changed = patient_body(1);
    changed["address"] = json!("3 Gateway Road");
    let updated = call(reqwest::Method::PUT, &location).json(&changed).send().await.unwrap();
    assert_eq!(updated.status(), 200);
    // The account opens PENDING and turns ACTIVE once billing has seen the patient's event.
    let bill = eventually(Duration::from_secs(60), "the account active", || async {
        let bill: Value = call(reqwest::Method::GET, &format!("{location}/bill")).send().await.unwrap().json().await.unwrap();
        (bill["status"] == "ACTIVE").then_some(bill)
    })
    .await;
    assert_eq!(bill["patientId"], id.as_str());

    let summary = eventually(Duration::from_secs(60), "analytics via the gateway", || async {
        let s: Value = call(reqwest::Method::GET, "/api/analytics/summary").send().await.unwrap().json().await.unwrap();
        (s["patientsCreated"] == 1 && s["patientsUpdated"] == 1).then_some(s)
    })
    .await;
    assert_eq!(summary["activePatients"], 1);

    assert_eq!(call(reqwest::Method::DELETE, &location).send().await.unwrap().status(), 204);
    assert_eq!(call(reqwest::Method::GET, &location).send().await.unwrap().status(), 404);
    eventually(Duration::from_secs(60), "the account closed", || async {
        let status: String = sqlx::query_scalar("SELECT status FROM billing_accounts WHERE patient_id = $1::uuid")
            .bind(&id)
            .fetch_one(&billing.db)
            .await
            .unwrap();
        (status == "CLOSED").then_some(())
    })
    .await;

    // Every series the shipped Grafana dashboard charts is one a service really exports.
    let mut exported = String::new();
    for port in [app_port(&gw), patients.port, billing.port, analytics.port] {
        exported += &reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    }
    let dashboard: Value = serde_json::from_str(include_str!("../../deploy/grafana/patient-platform.json")).unwrap();
    let charted: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap()))
        .flat_map(|expr| expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| word.ends_with("_total") || word.ends_with("_state"))
        .collect();
    assert!(charted.len() >= 10, "{charted:?}");
    for metric in charted {
        assert!(exported.contains(&format!("# TYPE {metric} ")), "the dashboard charts {metric}, which nothing exports");
    }
}

fn app_port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}
