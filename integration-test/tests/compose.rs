//! The README's journeys against `docker compose up`: the same docker-compose.yml users run
//! (service images built from the one Dockerfile, Keycloak from keycloak/Dockerfile, the local
//! images where no registry is reachable), on free host ports under a compose project of its
//! own, removed afterwards. Only the gateway, Keycloak and the dev UIs are published, so every
//! call here goes the way a user's does.
//!
//! Runs with the Docker backend (`TEST_INFRA=docker`, as `cargo xtask test` does when a Docker
//! engine is available).

mod support;

use std::time::Duration;

use chrono::{Duration as Span, SecondsFormat, Utc};
use dev_stack::{
    containers::{backend, Backend},
    docker::{Compose, ComposePorts},
    keycloak::{CLINICIAN, REALM},
};
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn the_readme_journeys_pass_against_docker_compose_up() {
    if backend() != Backend::Docker {
        eprintln!("compose: runs with TEST_INFRA=docker");
        return;
    }
    let ports = ComposePorts::free().unwrap();
    let project = format!("patient-platform-test-{}", std::process::id());
    let stack = tokio::task::spawn_blocking(move || Compose::up(&project, ports, true)).await.unwrap().unwrap();
    // Bounded, so a hung call cannot keep the stack from being removed.
    let result = tokio::spawn(tokio::time::timeout(Duration::from_secs(600), journeys(ports))).await;
    if !matches!(result, Ok(Ok(()))) {
        eprintln!("compose: the services' last log lines:\n{}", stack.logs(40));
    }
    tokio::task::spawn_blocking(move || drop(stack)).await.unwrap();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the journeys did not finish within 10 minutes"),
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}

async fn journeys(ports: ComposePorts) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let gw = format!("http://127.0.0.1:{}", ports.gateway);
    // Tokens carry the public issuer (KC_HOSTNAME, http://localhost:<port>) however Keycloak is reached.
    let token_url = format!("http://127.0.0.1:{}/realms/{REALM}/protocol/openid-connect/token", ports.keycloak);
    let token = |form: Vec<(&'static str, &'static str)>| {
        let (http, url) = (http.clone(), token_url.clone());
        async move {
            let resp = http.post(url).form(&form).send().await.unwrap();
            assert_eq!(resp.status(), 200, "token: {:?}", resp.text().await);
            resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
        }
    };

    // Journey 1: client_credentials, then the patient lifecycle through the gateway.
    let service =
        token(vec![("grant_type", "client_credentials"), ("client_id", "ms-api"), ("client_secret", "ms-api-dev-secret")]).await;
    assert_eq!(http.get(format!("{gw}/api/patients")).send().await.unwrap().status(), 401, "no token, no data");
    let body = json!({
        "name": "Compose Patient",
        "email": format!("compose-{}@example.org", std::process::id()),
        "address": "1 Container Road",
        "dateOfBirth": "1980-02-03",
        "registeredDate": "2024-03-04"
    });
    let created = http.post(format!("{gw}/api/patients")).bearer_auth(&service).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let patient = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let got: Value = http.get(format!("{gw}{location}")).bearer_auth(&service).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["email"], body["email"]);
    // The 15 seeded demo patients and ours, a page at a time.
    let page = http.get(format!("{gw}/api/patients?page=0&size=5")).bearer_auth(&service).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-total-count"], "16");
    assert_eq!(page.json::<Vec<Value>>().await.unwrap().len(), 5);
    // Billing (gRPC from patient-service, then the patient's event over Kafka) activates the account.
    eventually(Duration::from_secs(90), "the account active", || async {
        let bill: Value =
            http.get(format!("{gw}{location}/bill")).bearer_auth(&service).send().await.unwrap().json().await.ok()?;
        (bill["status"] == "ACTIVE").then_some(())
    })
    .await;
    eventually(Duration::from_secs(90), "analytics counts the patient", || async {
        let s: Value =
            http.get(format!("{gw}/api/analytics/summary")).bearer_auth(&service).send().await.unwrap().json().await.ok()?;
        (s["patientsCreated"].as_u64()? >= 1).then_some(())
    })
    .await;

    // Journey 2: a clinician books an appointment for the patient; the patient is mailed.
    let clinician = token(vec![
        ("grant_type", "password"),
        ("client_id", "patient-web"),
        ("username", CLINICIAN.0),
        ("password", CLINICIAN.1),
    ])
    .await;
    let me = subject(&clinician);
    let starts = (Utc::now() + Span::days(2)).date_naive().and_hms_opt(10, 0, 0).unwrap().and_utc();
    let booking = json!({
        "patientId": patient,
        "clinicianId": me,
        "startsAt": starts.to_rfc3339_opts(SecondsFormat::Secs, true),
        "endsAt": (starts + Span::minutes(30)).to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    // The patient reaches appointment-service over Kafka: 422 until then.
    let (appointment, consistency) = eventually(Duration::from_secs(90), "the booking accepted", || async {
        let resp = http.post(format!("{gw}/api/appointments")).bearer_auth(&clinician).json(&booking).send().await.unwrap();
        match resp.status().as_u16() {
            201 => {
                let token = resp.headers()["x-consistency-token"].to_str().unwrap().to_owned();
                Some((resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned(), token))
            }
            422 => None,
            other => panic!("booking answered {other}: {:?}", resp.text().await),
        }
    })
    .await;
    // The schedule (the read side, fed over Kafka) shows it when asked to wait for the booking.
    let schedule = format!("{gw}/api/appointments/schedule?clinicianId={me}&date={}", starts.date_naive());
    let seen = http.get(schedule).bearer_auth(&clinician).header("x-wait-for", consistency).send().await.unwrap();
    assert_eq!(seen.status(), 200);
    let entries: Vec<Value> = seen.json().await.unwrap();
    assert_eq!(entries.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), [appointment.as_str()]);
    let mailbox = format!("http://127.0.0.1:{}/api/v1/search?query=to:{}", ports.mailpit_ui, body["email"].as_str().unwrap());
    let mut subjects = eventually(Duration::from_secs(90), "the welcome and the confirmation mailed", || async {
        let found: Value = http.get(&mailbox).send().await.ok()?.json().await.ok()?;
        let subjects: Vec<String> =
            found["messages"].as_array()?.iter().filter_map(|m| m["Subject"].as_str().map(str::to_owned)).collect();
        (subjects.len() >= 2).then_some(subjects)
    })
    .await;
    subjects.sort_unstable();
    assert_eq!(subjects.len(), 2, "one welcome, one confirmation: {subjects:?}");
    assert!(subjects[0].starts_with("Welcome"), "{subjects:?}");
    assert!(subjects[1].starts_with("Your appointment on") && subjects[1].ends_with("is booked"), "{subjects:?}");

    // The trace backend received spans from the services.
    let traced = format!("http://127.0.0.1:{}/api/services", ports.jaeger_ui);
    eventually(Duration::from_secs(60), "the services' spans in Jaeger", || async {
        let services: Value = http.get(&traced).send().await.ok()?.json().await.ok()?;
        let names: Vec<&str> = services["data"].as_array()?.iter().filter_map(Value::as_str).collect();
        ["gateway", "patient-service", "billing-service", "appointment-service"].iter().all(|s| names.contains(s)).then_some(())
    })
    .await;

    // Deleting the patient cancels the booking and closes the account.
    let deleted = http.delete(format!("{gw}{location}")).bearer_auth(&service).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    eventually(Duration::from_secs(90), "the booking cancelled", || async {
        let a: Value = http
            .get(format!("{gw}/api/appointments/{appointment}"))
            .bearer_auth(&clinician)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .ok()?;
        (a["status"] == "CANCELLED").then_some(())
    })
    .await;
}
