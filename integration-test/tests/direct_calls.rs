//! analytics-service called directly, without the gateway (SPEC §10): the same 401 / 403 / 200
//! as through it, with tokens from the real Keycloak.

mod support;

use common::kafka::KafkaArgs;
use dev_stack::keycloak::{Keycloak, ANALYST, CLINICIAN};
use support::*;

#[tokio::test]
async fn analytics_checks_its_callers_itself() {
    let kc = Keycloak::shared_for_tests();
    let analytics = spawn_analytics(None, KafkaArgs::disabled()).await;
    let url = format!("http://127.0.0.1:{}/analytics/summary", analytics.port);
    let http = reqwest::Client::new();

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer realm=\"patient-platform\"");
    let forged = http.get(&url).bearer_auth("eyJhbGciOiJub25lIn0.e30.").send().await.unwrap();
    assert_eq!(forged.status(), 401);

    let clinician = kc.user_token(CLINICIAN).await.unwrap();
    let denied = http.get(&url).bearer_auth(&clinician).send().await.unwrap();
    assert_eq!(denied.status(), 403, "a clinician holds no analytics.read");
    assert!(denied.headers()["www-authenticate"].to_str().unwrap().contains("scope=\"analytics.read\""));
    assert_eq!(denied.headers()["content-type"], "application/problem+json");

    let analyst = kc.user_token(ANALYST).await.unwrap();
    let allowed = http.get(&url).bearer_auth(&analyst).send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    let summary: serde_json::Value = allowed.json().await.unwrap();
    assert_eq!(summary["patientsCreated"], 0);

    for open in ["/health/live", "/health/ready", "/metrics"] {
        let status = http.get(format!("http://127.0.0.1:{}{open}", analytics.port)).send().await.unwrap().status();
        assert_eq!(status, 200, "{open} stays open");
    }
}
