//! The API description through the gateway: `/api/openapi.json` merges what the real services
//! generate, without a token; `/api/docs` renders in headless Chromium and its "Try it out" call
//! with a token reaches patient-service (which audits it), screenshots kept as artifacts; and
//! schemathesis fuzzes the whole API through the gateway against that document.

mod support;

use std::{path::PathBuf, process::Command};

use common::kafka::KafkaArgs;
use dev_stack::keycloak::Keycloak;
use serde_json::Value;
use support::*;

const REALM: &str = "patient-management";

/// The four services behind a gateway; returns the gateway's URL and the running services.
async fn platform() -> (String, [Running; 4]) {
    let kc = Keycloak::shared_for_tests();
    let (billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    let patients = spawn_patients(&grpc, KafkaArgs::disabled()).await;
    let analytics = spawn_analytics(None, KafkaArgs::disabled()).await;
    let appointments = spawn_appointments(KafkaArgs::disabled(), "appointment").await;
    let mut settings = gateway::config::Settings::for_issuer(kc.issuer(REALM), format!("http://127.0.0.1:{}", patients.port));
    settings.analytics_service_url = format!("http://127.0.0.1:{}", analytics.port);
    settings.appointment_service_url = format!("http://127.0.0.1:{}", appointments.port);
    let app = gateway::startup::Application::build(settings).await.unwrap();
    let gw = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    (gw, [billing, patients, analytics, appointments])
}

#[tokio::test]
async fn the_merged_description_is_public_and_the_docs_try_it_call_succeeds_with_a_token() {
    let kc = Keycloak::shared_for_tests();
    let (gw, [_billing, patients, _analytics, _appointments]) = platform().await;

    let resp = reqwest::get(format!("{gw}/api/openapi.json")).await.unwrap();
    assert_eq!(resp.status(), 200, "public, no token");
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["servers"][0]["url"], "/api");
    for path in [
        "/patients",
        "/patients/{id}",
        "/patients/{id}/bill",
        "/audit",
        "/analytics/summary",
        "/appointments",
        "/appointments/schedule",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} from the services' own documents");
    }
    let create = &doc["paths"]["/patients"]["post"]["responses"];
    for status in ["201", "400", "401", "403", "409", "413", "415", "422", "429", "503"] {
        assert!(create[status].is_object(), "POST /api/patients documents {status}");
    }
    let flows = &doc["components"]["securitySchemes"]["keycloak"]["flows"];
    assert_eq!(flows["clientCredentials"]["tokenUrl"], format!("{}/protocol/openid-connect/token", kc.issuer(REALM)));
    assert!(flows["authorizationCode"]["authorizationUrl"].as_str().unwrap().ends_with("/protocol/openid-connect/auth"));

    // The UI, with a real token, through the gateway onto patient-service.
    let token = kc.service_token().await.unwrap();
    let shots = artifacts_dir("api-docs");
    let browser = dev_stack::browser::ensure().expect("browser installs");
    let mut cmd = Command::new("node");
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/api-docs.cjs"))
        .env("NODE_PATH", &browser.node_path)
        .env("CHROMIUM", &browser.chromium)
        .env("GATEWAY_URL", &gw)
        .env("TOKEN", &token)
        .env("SCREENSHOT_DIR", &shots);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("node runs")).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docs script failed (screenshots in {}):\n{stdout}{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("status 200"), "the UI shows the call's 200: {stdout}");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'patient.search' AND outcome = 200")
        .fetch_one(&patients.db)
        .await
        .unwrap();
    assert_eq!(audited, 1, "the UI's call reached patient-service with the token");
    println!("API docs screenshots: {}", shots.display());
}

/// Contract fuzzing (schemathesis, every check but "schema-valid data is accepted": the API
/// rightly refuses some schema-valid bodies, e.g. a birth date in the future or a taken email):
/// no 5xx, every status and body as documented, schema-violating requests refused, no answer
/// without a valid token, 405 with `Allow` for other methods.
#[tokio::test]
async fn schemathesis_finds_no_contract_violation_through_the_gateway() {
    let kc = Keycloak::shared_for_tests();
    let (gw, _services) = platform().await;
    let doc: Value = reqwest::get(format!("{gw}/api/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(doc["paths"].as_object().unwrap().len(), 14, "the whole API is described: {}", doc["paths"]);
    let st = tokio::task::spawn_blocking(dev_stack::python::schemathesis).await.unwrap().expect("schemathesis installs");
    // Its example cache goes to a directory of its own, not into the work tree.
    let workdir = std::env::temp_dir().join(format!("schemathesis-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&workdir).unwrap();
    let token = kc.service_token().await.unwrap();
    let mut cmd = Command::new(st);
    cmd.current_dir(&workdir)
        .args(["run", &format!("{gw}/api/openapi.json"), "--url", &format!("{gw}/api")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "50", "--seed", "20261201", "--no-color"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("schemathesis runs")).await.unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "schemathesis found violations:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        let line = report.lines().find(|l| l.contains(phase)).unwrap_or_else(|| panic!("no {phase} phase in:\n{report}"));
        assert!(line.contains('✅'), "the {phase} phase passed: {line}");
    }
    let _ = std::fs::remove_dir_all(workdir);
}
