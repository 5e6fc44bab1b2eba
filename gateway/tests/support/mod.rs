//! Shared helpers of the gateway suites: a real Keycloak (the project's launcher), a recording
//! backend that counts what reached it, the gateway under test, and token tools.

#![allow(dead_code)]

pub mod backend;
pub mod tokens;

use dev_stack::keycloak::Keycloak;
use gateway::{config::Settings, startup::Application};
use serde_json::Value;

pub const REALM: &str = "patient-management";

/// A gateway on a free port in front of `backend_url`, trusting the realm of `kc`.
pub async fn spawn_gateway(kc: &Keycloak, backend_url: &str, tweak: impl FnOnce(&mut Settings)) -> String {
    let mut settings = Settings::for_issuer(kc.issuer(REALM), backend_url);
    settings.oidc.jwks_min_refetch_ms = 200;
    tweak(&mut settings);
    let app = Application::build(settings).await.expect("gateway builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    url
}

/// A counter of the gateway's `/metrics`, e.g. `gateway_jwks_fetch_total{result="success"}`.
pub async fn metric(gateway: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{gateway}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Access token of the `ms-api` service account (client_credentials).
pub async fn service_token(kc: &Keycloak) -> String {
    kc.client_token(REALM, "ms-api", "ms-api-dev-secret").await.unwrap()
}

/// Access token of a dev user through the public client (direct grant, dev realm only).
pub async fn user_token(kc: &Keycloak, user: &str, password: &str) -> String {
    kc.user_token((user, password)).await.unwrap()
}

/// A token of the master realm's admin, for the Admin REST API.
pub async fn admin_token(kc: &Keycloak) -> String {
    let (user, password) = kc.admin_credentials();
    let url = format!("{}/realms/master/protocol/openid-connect/token", kc.base_url());
    let form = [("grant_type", "password"), ("client_id", "admin-cli"), ("username", user), ("password", password)];
    let body: Value = reqwest::Client::new().post(url).form(&form).send().await.unwrap().json().await.unwrap();
    body["access_token"].as_str().expect("admin token").to_owned()
}

/// The realm's JWKS document.
pub async fn jwks(kc: &Keycloak) -> Value {
    reqwest::get(format!("{}/realms/{REALM}/protocol/openid-connect/certs", kc.base_url())).await.unwrap().json().await.unwrap()
}

/// Adds a key provider component to the realm through the Admin REST API.
pub async fn add_key_provider(kc: &Keycloak, name: &str, provider_id: &str, config: Value) {
    let admin = admin_token(kc).await;
    let client = reqwest::Client::new();
    let realm: Value = client
        .get(format!("{}/admin/realms/{REALM}", kc.base_url()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let component = serde_json::json!({
        "name": name,
        "providerId": provider_id,
        "providerType": "org.keycloak.keys.KeyProvider",
        "parentId": realm["id"],
        "config": config,
    });
    let resp = client
        .post(format!("{}/admin/realms/{REALM}/components", kc.base_url()))
        .bearer_auth(&admin)
        .json(&component)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "adding key provider: {:?}", resp.text().await);
}
