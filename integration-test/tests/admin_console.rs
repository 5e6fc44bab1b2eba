//! Journey 2: an administrator manages users and roles in the Keycloak admin console (headless
//! Chromium, Playwright); the platform follows with no change: the user's next token can create
//! a patient, and after the role is removed the next token gets 403. Screenshots of every console
//! step are kept as test artifacts.

mod support;

use std::{path::PathBuf, process::Command};

use common::kafka::KafkaArgs;
use dev_stack::keycloak::Keycloak;
use support::*;

const REALM: &str = "patient-management";

/// Runs the console script (`grant …` / `revoke …`) and fails with its output if it fails.
async fn console(kc: &Keycloak, shots: &PathBuf, args: Vec<String>) {
    let browser = dev_stack::browser::ensure().expect("browser installs");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/admin-console.cjs");
    let (user, password) = kc.admin_credentials();
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .args(&args)
        .env("NODE_PATH", &browser.node_path)
        .env("CHROMIUM", &browser.chromium)
        .env("KC_URL", kc.base_url())
        .env("KC_ADMIN", user)
        .env("KC_ADMIN_PASSWORD", password)
        .env("REALM", REALM)
        .env("SCREENSHOT_DIR", shots);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("node runs")).await.unwrap();
    assert!(
        out.status.success(),
        "console {args:?} failed (screenshots in {}):\n{}{}",
        shots.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_role_granted_in_the_admin_console_applies_to_the_next_token_and_so_does_its_removal() {
    let kc = Keycloak::shared_for_tests();
    let (_billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    let patients = spawn_patients(&grpc, KafkaArgs::disabled()).await;
    let app = gateway::startup::Application::build(gateway::config::Settings::for_issuer(
        kc.issuer(REALM),
        format!("http://127.0.0.1:{}", patients.port),
    ))
    .await
    .unwrap();
    let gw = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let shots = artifacts_dir("admin-console");
    let user = format!("console-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = "Console-Dev-1";
    let token = || async {
        let form =
            [("grant_type", "password"), ("client_id", "patient-web"), ("username", user.as_str()), ("password", password)];
        kc.token(REALM, &form).await.unwrap()
    };
    let create = |token: String, n: usize| {
        let url = format!("{gw}/api/patients");
        async move { reqwest::Client::new().post(url).bearer_auth(token).json(&patient_body(n)).send().await.unwrap().status() }
    };

    console(kc, &shots, vec!["grant".into(), user.clone(), password.into(), "clinician".into()]).await;
    assert_eq!(create(token().await, 1).await, 201, "the console-created clinician can create a patient");

    console(kc, &shots, vec!["revoke".into(), user.clone(), "clinician".into()]).await;
    assert_eq!(create(token().await, 2).await, 403, "the next token no longer carries patients.write");
    assert_eq!(patients_rows(&patients).await, 1);

    let pngs =
        std::fs::read_dir(&shots).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png")).count();
    assert!(pngs >= 8, "screenshots of every step kept in {}", shots.display());
    println!("admin console screenshots: {}", shots.display());
}

async fn patients_rows(patients: &Running) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM patients").fetch_one(&patients.db).await.unwrap()
}
