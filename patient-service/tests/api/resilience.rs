//! Calls to billing under failure: retries inside the deadline, and a circuit breaker that
//! answers 503 at once while billing is known to be down and closes again by itself.

use std::time::Duration;

use crate::helpers::*;

const STATE: &str = "circuit_breaker_state{dependency=\"billing\"}";
const REJECTED: &str = "circuit_breaker_rejected_total{dependency=\"billing\"}";

#[tokio::test]
async fn an_open_circuit_answers_503_without_calling_billing_and_a_probe_closes_it_when_billing_returns() {
    let mut app = TestApp::spawn_with(|s| {
        s.billing_resilience.billing_breaker_failures = 2;
        s.billing_resilience.billing_breaker_open_ms = 1_500;
    })
    .await;
    app.create_patient(&patient_body(1)).await;
    assert_eq!(app.metric(STATE).await, 0, "closed while billing answers");
    app.stop_billing().await;

    // Two failed attempts (the first try and its retry) open the circuit.
    assert_problem(app.post_patient(&patient_body(2)).await, 503).await;
    assert!(app.metric("billing_retries_total").await >= 1, "a refused connection is retried");
    assert_eq!(app.metric(STATE).await, 1, "open");

    let rejected = app.metric(REJECTED).await;
    let started = std::time::Instant::now();
    let resp = app.post_patient(&patient_body(3)).await;
    let elapsed = started.elapsed();
    let retry_after: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After is when the probe may go: {retry_after}");
    assert_problem(resp, 503).await;
    assert_eq!(app.metric(REJECTED).await, rejected + 1, "refused by the breaker, billing never called");
    eprintln!("503 from the open circuit after {elapsed:?}");
    assert_eq!(app.patient_rows().await, 1);

    // Billing comes back; after the open window one probe closes the circuit, no restart needed.
    app.restart_billing().await;
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    app.create_patient(&patient_body(4)).await;
    assert_eq!(app.metric(STATE).await, 0, "closed again");
    app.create_patient(&patient_body(5)).await;
    assert_eq!(app.patient_rows().await, 3);
    assert_eq!(app.billing_rows().await, 3);
}

#[tokio::test]
async fn a_bill_read_is_refused_by_the_open_circuit_too() {
    let mut app = TestApp::spawn_with(|s| {
        s.billing_resilience.billing_breaker_failures = 1;
        s.billing_resilience.billing_retry_attempts = 1;
    })
    .await;
    let id = app.create_patient(&patient_body(1)).await;
    app.stop_billing().await;
    let bill = app.url(&format!("/patients/{id}/bill"));

    assert_problem(app.client.get(&bill).send().await.unwrap(), 503).await;
    assert_eq!(app.metric("billing_retries_total").await, 0, "one attempt configured, none retried");
    let rejected = app.metric(REJECTED).await;
    assert_problem(app.client.get(&bill).send().await.unwrap(), 503).await;
    assert_eq!(app.metric(REJECTED).await, rejected + 1);
}

#[tokio::test]
async fn connections_the_database_dropped_while_idle_are_replaced_before_a_request_uses_them() {
    let app = TestApp::spawn().await;
    app.create_patient(&patient_body(1)).await;
    let list = app.url("/patients");
    let reads = || futures::future::join_all((0..8).map(|_| app.client.get(&list).send()));
    // Several pooled connections, each used moments ago (no ping before their next use).
    for resp in reads().await {
        assert_eq!(resp.unwrap().status(), 200);
    }

    // The server drops every connection of the service, as a restart or an idle timeout does.
    let dropped: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(dropped.len() >= 2, "the service held pooled connections: {dropped:?}");

    // Once they count as idle they are tested before use: no request meets a dead one.
    tokio::time::sleep(common::db::PING_WHEN_IDLE_FOR + Duration::from_millis(300)).await;
    for resp in reads().await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
}

#[tokio::test]
async fn billing_closing_its_connections_all_the_time_costs_no_create() {
    // Billing asks for a new connection every 200 ms (in production every few minutes, which
    // spreads callers over its replicas): creates racing those closes (GOAWAY) are carried on
    // a new one, none fails and none counts against billing.
    let app = TestApp::spawn_with_billing(|b| b.grpc.grpc_max_connection_age_ms = 200, |_| {}).await;
    let mut statuses = Vec::new();
    for round in 0..30 {
        let wave = (0..8).map(|i| {
            let body = patient_body(round * 8 + i);
            let app = &app;
            async move { app.post_patient(&body).await }
        });
        for resp in futures::future::join_all(wave).await {
            statuses.push(resp.status().as_u16());
        }
    }
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 201).collect();
    assert!(failed.is_empty(), "{} of {} creates failed: {failed:?}", failed.len(), statuses.len());
    assert_eq!((app.patient_rows().await, app.billing_rows().await), (240, 240));
    assert_eq!(app.metric(REJECTED).await, 0, "the circuit never opened");
}

#[tokio::test]
async fn billing_losing_its_connection_under_a_call_is_retried_not_a_502() {
    // Billing with one pooled connection; each round uses it, has the database server drop it (a
    // restart, a failover) and calls billing again at once, before the connection counts as idle
    // (idle ones are pinged and replaced before use): the call meets it broken. UNAVAILABLE from
    // billing, not INTERNAL: retried on a new connection, and the create goes through.
    let app = TestApp::spawn_with_billing(|b| b.db.database_max_connections = 1, |_| {}).await;
    let mut rounds = 0;
    let retried = loop {
        rounds += 1;
        let retries = app.metric("billing_retries_total").await;
        app.create_patient(&patient_body(2 * rounds)).await;
        let dropped: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&app.billing_db)
        .await
        .unwrap();
        assert!(!dropped.is_empty(), "billing held a connection");
        let resp = app.post_patient(&patient_body(2 * rounds + 1)).await;
        assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
        if app.metric("billing_retries_total").await > retries {
            break true;
        }
        // The machine was slow enough for the connection to be pinged first: once more.
        if rounds == 5 {
            break false;
        }
    };
    assert!(retried, "in {rounds} rounds no call met the dropped connection");
    let rows = 2 * i64::try_from(rounds).unwrap();
    assert_eq!((app.patient_rows().await, app.billing_rows().await), (rows, rows));
}

#[tokio::test]
async fn no_free_database_connection_is_a_503_that_did_nothing() {
    // One connection, and a short wait for it.
    let app = TestApp::spawn_with(|s| {
        s.db.database_max_connections = 1;
        s.db.database_acquire_timeout_ms = 300;
    })
    .await;
    let id = app.create_patient(&patient_body(1)).await;
    // A change that holds the service's only connection: it waits for a row lock this test holds.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM patients WHERE id = $1::uuid FOR UPDATE").bind(&id).execute(&mut *lock).await.unwrap();
    let mut changed = patient_body(1);
    changed["address"] = serde_json::json!("9 Waiting Lane");
    let update = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url(&format!("/patients/{id}")));
        async move { client.put(url).json(&changed).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Every other request finds no connection in time: 503 with Retry-After, nothing done.
    for resp in [app.client.get(app.url("/patients")).send().await.unwrap(), app.post_patient(&patient_body(2)).await] {
        assert_eq!(resp.headers()["retry-after"], common::db::RETRY_UNREACHABLE_AFTER_SECS.to_string().as_str());
        assert_problem(resp, 503).await;
    }
    lock.rollback().await.unwrap();
    assert_eq!(update.await.unwrap(), 200, "the waiting change completes");
    assert_eq!(app.patient_rows().await, 1, "the refused create left no patient");
    assert_eq!(app.client.get(app.url("/patients")).send().await.unwrap().status(), 200);
}
