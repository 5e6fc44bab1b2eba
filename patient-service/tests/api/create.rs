//! POST /patients: the happy path, every rejection, and billing outages.

use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::helpers::{assert_problem, patient_body, TestApp};

#[tokio::test]
async fn create_returns_201_with_location_and_persists_patient_account_and_event() {
    let app = TestApp::spawn().await;

    let resp = app.post_patient(&patient_body(1)).await;

    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(location, format!("/patients/{id}"));
    assert_eq!(body["name"], "Test Patient 1");
    assert_eq!(body["dateOfBirth"], "1985-06-15");
    assert_eq!(body["registeredDate"], "2024-01-10");

    let (name, email): (String, String) =
        sqlx::query_as("SELECT name, email FROM patients WHERE id = $1::uuid").bind(id).fetch_one(&app.db).await.unwrap();
    assert_eq!((name.as_str(), email.as_str()), ("Test Patient 1", "patient1@example.com"));
    let account_patient: String =
        sqlx::query_scalar("SELECT patient_id::text FROM billing_accounts").fetch_one(&app.billing_db).await.unwrap();
    assert_eq!(account_patient, id, "billing account opened for the new patient");
    let events = app.outbox_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].event_type.as_str(), events[0].patient_id.as_str()), ("PATIENT_CREATED", id));
    assert_eq!(events[0].email, "patient1@example.com");
    assert!(uuid::Uuid::parse_str(&events[0].event_id).is_ok());

    let location_get = app.client.get(app.url(&location)).send().await.unwrap();
    assert_eq!(location_get.status(), 200, "Location can be followed");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("http_requests_total{method=\"POST\",route=\"/patients\",status=\"201\"} 1"), "{metrics}");
    assert!(metrics.contains("route=\"/patients/{id}\",status=\"200\"} 1"), "route templates, not ids: {metrics}");
}

#[tokio::test]
async fn location_and_links_honour_the_proxy_prefix() {
    let app = TestApp::spawn().await;
    let resp =
        app.client.post(app.url("/patients")).header("x-forwarded-prefix", "/api").json(&patient_body(1)).send().await.unwrap();
    assert!(resp.headers()["location"].to_str().unwrap().starts_with("/api/patients/"));
}

#[tokio::test]
async fn a_forwarded_prefix_that_is_not_a_plain_path_is_ignored() {
    let app = TestApp::spawn().await;
    for (n, prefix) in ["//evil.example", "//evil.example/api", "/api//x", "/../api", "/a b"].into_iter().enumerate() {
        let resp = app.client.post(app.url("/patients")).header("x-forwarded-prefix", prefix).json(&patient_body(n)).send().await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 201);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with("/patients/"), "{prefix:?} gave Location {location}");
    }
}

#[tokio::test]
async fn create_with_invalid_fields_returns_400_with_errors_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({}), vec!["address", "dateOfBirth", "email", "name", "registeredDate"]),
        (json!({"email": "not-an-email"}), vec!["email"]),
        (json!({"name": "x".repeat(101)}), vec!["name"]),
        (json!({"name": "   "}), vec!["name"]),
        (json!({"address": ""}), vec!["address"]),
        (json!({"dateOfBirth": "2999-01-01"}), vec!["dateOfBirth"]),
        (json!({"dateOfBirth": "2023-02-30"}), vec!["dateOfBirth"]),
        (json!({"dateOfBirth": "15/06/1985"}), vec!["dateOfBirth"]),
        (json!({"registeredDate": null}), vec!["registeredDate"]),
        (json!({"address": "1 Main\u{0} St"}), vec!["address"]),
        (json!({"dateOfBirth": "-999-01-01"}), vec!["dateOfBirth"]),
        (json!({"dateOfBirth": "+999-01-01"}), vec!["dateOfBirth"]),
        (json!({"registeredDate": "2024- 1-05"}), vec!["registeredDate"]),
        (json!({"dateOfBirth": "1990-01- 5"}), vec!["dateOfBirth"]),
        (json!({"dateOfBirth": "1026-06-15"}), vec!["dateOfBirth"]),
        (json!({"registeredDate": "2999-01-01"}), vec!["registeredDate"]),
        (json!({"dateOfBirth": "2000-01-02", "registeredDate": "2000-01-01"}), vec!["registeredDate"]),
        (json!({"name": "\u{200B}"}), vec!["name"]),
        (json!({"name": "Ann\u{202E}Smith"}), vec!["name"]),
        (json!({"address": "1 Main\u{2028}St"}), vec!["address"]),
        (json!({"email": "<ann@example.com>"}), vec!["email"]),
        (json!({"email": "ann@example.com;"}), vec!["email"]),
        (json!({"email": "\"ann\"@example.com"}), vec!["email"]),
    ];
    for (overrides, fields) in cases {
        let mut body = patient_body(1);
        if overrides.as_object().unwrap().is_empty() {
            body = json!({});
        }
        for (k, v) in overrides.as_object().unwrap() {
            body[k] = v.clone();
        }
        let problem = assert_problem(app.post_patient(&body).await, 400).await;
        let errors: Vec<&str> = problem["errors"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(errors, fields, "for {overrides}");
    }
    assert_eq!(app.patient_rows().await, 0);
    assert_eq!(app.billing_rows().await, 0, "billing is not called for invalid input");
    assert!(app.outbox_events().await.is_empty());
}

#[tokio::test]
async fn malformed_json_wrong_shape_and_wrong_types_return_400() {
    let app = TestApp::spawn().await;
    for raw in ["{\"name\": ", "[1,2]", "{\"name\": 5}"] {
        let resp =
            app.client.post(app.url("/patients")).header("content-type", "application/json").body(raw).send().await.unwrap();
        assert_problem(resp, 400).await;
    }
    assert_eq!(app.patient_rows().await, 0);
}

#[tokio::test]
async fn wrong_content_type_returns_415_and_oversized_body_returns_413() {
    let app = TestApp::spawn().await;
    let text = app
        .client
        .post(app.url("/patients"))
        .header("content-type", "text/plain")
        .body(patient_body(1).to_string())
        .send()
        .await
        .unwrap();
    assert_problem(text, 415).await;

    let mut huge = patient_body(2);
    huge["address"] = Value::String("x".repeat(64 * 1024));
    assert_problem(app.post_patient(&huge).await, 413).await;
    assert_eq!(app.patient_rows().await, 0);
}

#[tokio::test]
async fn create_returns_409_when_email_is_taken_in_any_case() {
    let app = TestApp::spawn().await;
    app.create_patient(&patient_body(1)).await;

    let mut again = patient_body(2);
    again["email"] = json!("PATIENT1@Example.com");
    let problem = assert_problem(app.post_patient(&again).await, 409).await;

    assert!(problem["detail"].as_str().unwrap().contains("email"));
    assert_eq!(app.patient_rows().await, 1);
    assert_eq!(app.outbox_events().await.len(), 1);
}

#[tokio::test]
async fn concurrent_creates_with_one_email_yield_exactly_one_201() {
    let app = TestApp::spawn().await;
    let attempts = (0..8).map(|i| {
        let mut body = patient_body(100 + i);
        body["email"] = json!("same@example.com");
        let (client, url) = (app.client.clone(), app.url("/patients"));
        async move { client.post(url).json(&body).send().await.unwrap().status().as_u16() }
    });
    let mut statuses = futures::future::join_all(attempts).await;
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    assert_eq!(app.patient_rows().await, 1);
}

#[tokio::test]
async fn create_returns_503_with_retry_after_and_persists_nothing_when_billing_is_down() {
    let mut app = TestApp::spawn().await;
    app.create_patient(&patient_body(1)).await;
    app.stop_billing().await;

    let resp = app.post_patient(&patient_body(2)).await;

    assert_eq!(resp.headers()["retry-after"], "5");
    assert_problem(resp, 503).await;
    assert_eq!(app.patient_rows().await, 1, "only the patient created while billing was up");
    assert_eq!(app.outbox_events().await.len(), 1);
}

#[tokio::test]
async fn create_returns_503_within_the_deadline_when_billing_hangs() {
    // A peer that accepts TCP connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let app = TestApp::spawn_with(|s| {
        s.billing_grpc_url = silent_url;
        s.billing_timeout_ms = 500;
    })
    .await;

    let started = std::time::Instant::now();
    let resp = app.post_patient(&patient_body(1)).await;

    assert_problem(resp, 503).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the deadline bounds the wait");
    assert_eq!(app.patient_rows().await, 0);
    assert!(app.outbox_events().await.is_empty());
}

#[tokio::test]
async fn a_slow_billing_does_not_starve_other_endpoints_of_database_connections() {
    let app = TestApp::spawn_with(|s| {
        s.db.database_max_connections = 3;
        s.db.database_acquire_timeout_ms = 1_000;
        s.billing_timeout_ms = 8_000;
    })
    .await;
    app.create_patient(&patient_body(0)).await;
    // Billing is real but slow: its accounts table is locked, so every create waits inside it.
    let mut lock = app.billing_db.begin().await.unwrap();
    sqlx::query("LOCK TABLE billing_accounts IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let creates: Vec<_> = (1..=8)
        .map(|n| {
            let (client, url) = (app.client.clone(), app.url("/patients"));
            tokio::spawn(async move { client.post(url).json(&patient_body(n)).send().await.unwrap().status().as_u16() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // Eight creates wait on billing; with three pooled connections the rest still answers.
    for path in ["/health/ready", "/patients", "/patients?size=5"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} while billing is slow");
    }
    assert!(creates.iter().all(|c| !c.is_finished()), "the creates were still waiting on billing");

    lock.commit().await.unwrap();
    for create in creates {
        assert_eq!(create.await.unwrap(), 201);
    }
    assert_eq!(app.patient_rows().await, 9);
    assert_eq!(app.billing_rows().await, 9);
    assert_eq!(app.outbox_events().await.len(), 9);
}

#[tokio::test]
async fn a_create_refused_for_its_email_never_reaches_billing() {
    let app = TestApp::spawn().await;
    app.create_patient(&patient_body(1)).await;
    let mut same_email = patient_body(2);
    same_email["email"] = json!("PATIENT1@example.com");

    assert_problem(app.post_patient(&same_email).await, 409).await;

    assert_eq!(app.billing_rows().await, 1, "no account for the refused create");
}
