//! patient-service checks its callers itself (SPEC §10): called directly, without the gateway,
//! it answers exactly as the gateway would, with tokens from the real Keycloak.

use dev_stack::keycloak::{Keycloak, ANALYST, CLINICIAN};

use crate::helpers::{assert_problem, client_with, patient_body, TestApp};

#[tokio::test]
async fn a_direct_call_without_a_token_gets_401_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let anonymous = reqwest::Client::new();

    for (method, path) in [("GET", "/patients"), ("POST", "/patients"), ("GET", "/patients/00000000-0000-0000-0000-000000000001")]
    {
        let req = anonymous.request(method.parse().unwrap(), app.url(path)).json(&patient_body(1));
        let resp = req.send().await.unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"patient-platform\"", "{method} {path}");
        assert_problem(resp, 401).await;
    }
    let forged = anonymous.get(app.url("/patients")).header("authorization", "Bearer not.a.token").send().await.unwrap();
    assert!(forged.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    assert_problem(forged, 401).await;
    assert_eq!(app.patient_rows().await, 0);
    assert_eq!(app.billing_rows().await, 0);

    // Operations endpoints stay open.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert_eq!(anonymous.get(app.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
}

#[tokio::test]
async fn roles_are_enforced_by_the_service_itself() {
    let app = TestApp::spawn().await;
    let kc = Keycloak::shared_for_tests();
    let analyst = client_with(&kc.user_token(ANALYST).await.unwrap());
    let clinician = client_with(&kc.user_token(CLINICIAN).await.unwrap());

    let denied = analyst.get(app.url("/patients")).send().await.unwrap();
    let challenge = denied.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"patients.read\""), "{challenge}");
    assert_problem(denied, 403).await;
    assert_problem(analyst.post(app.url("/patients")).json(&patient_body(1)).send().await.unwrap(), 403).await;
    assert_eq!(app.patient_rows().await, 0, "a refused create stored nothing");
    assert_eq!(app.billing_rows().await, 0, "and never reached billing");

    // The clinician reads and writes but may not delete (patients.delete is admin's).
    let created = clinician.post(app.url("/patients")).json(&patient_body(2)).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(clinician.get(app.url("/patients")).send().await.unwrap().status(), 200);
    assert_eq!(clinician.get(app.url(&format!("/patients/{id}/bill"))).send().await.unwrap().status(), 200);
    assert_problem(clinician.delete(app.url(&format!("/patients/{id}"))).send().await.unwrap(), 403).await;
    assert_eq!(app.patient_rows().await, 1, "the refused delete deleted nothing");
}

#[tokio::test]
async fn two_authorization_headers_are_refused_with_400() {
    let app = TestApp::spawn().await;
    let token = Keycloak::shared_for_tests().service_token().await.unwrap();
    let resp = reqwest::Client::new()
        .post(app.url("/patients"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", "Bearer other")
        .json(&patient_body(1))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400).await;
    assert_eq!(app.patient_rows().await, 0);
}
