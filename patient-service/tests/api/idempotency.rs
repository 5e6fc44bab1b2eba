//! `Idempotency-Key` on POST /patients: replays, mismatches, and a retry after billing timed out
//! that makes no second account (real billing, real PostgreSQL, real Keycloak tokens).

use dev_stack::keycloak::{Keycloak, CLINICIAN};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, client_with, patient_body, TestApp};

async fn post_with_key(app: &TestApp, client: &reqwest::Client, key: &str, body: &Value) -> reqwest::Response {
    client.post(app.url("/patients")).header("idempotency-key", key).json(body).send().await.unwrap()
}

#[tokio::test]
async fn the_same_key_and_body_replay_the_first_201_without_a_second_patient() {
    let app = TestApp::spawn().await;
    let first = post_with_key(&app, &app.client, "\"create-ann-1\"", &patient_body(1)).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let created: Value = first.json().await.unwrap();

    let again = post_with_key(&app, &app.client, "create-ann-1", &patient_body(1)).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), created, "the same response");

    assert_eq!((app.patient_rows().await, app.billing_rows().await, app.outbox_events().await.len()), (1, 1, 1));
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    assert_eq!(post_with_key(&app, &app.client, "k-1", &patient_body(1)).await.status(), 201);
    let mut other = patient_body(1);
    other["address"] = json!("somewhere else");
    assert_problem(post_with_key(&app, &app.client, "k-1", &other).await, 422).await;
    assert_eq!((app.patient_rows().await, app.billing_rows().await), (1, 1));
}

#[tokio::test]
async fn keys_belong_to_their_caller_and_malformed_keys_are_400() {
    let app = TestApp::spawn().await;
    let clinician = client_with(&Keycloak::shared_for_tests().user_token(CLINICIAN).await.unwrap());
    assert_eq!(post_with_key(&app, &app.client, "shared", &patient_body(1)).await.status(), 201);
    let theirs = post_with_key(&app, &clinician, "shared", &patient_body(2)).await;
    assert_eq!(theirs.status(), 201, "another caller's key is not ours to replay or refuse");
    assert!(theirs.headers().get("idempotent-replayed").is_none());

    for bad in ["", "\"\"", &"k".repeat(256), "caf\u{e9}"] {
        let resp = app.client.post(app.url("/patients")).header("idempotency-key", bad).json(&patient_body(3)).send().await;
        if let Ok(resp) = resp {
            assert_problem(resp, 400).await;
        }
    }
    assert_eq!(app.patient_rows().await, 2);
}

#[tokio::test]
async fn a_retry_after_the_client_gave_up_reuses_the_patient_id_and_opens_no_second_account() {
    let app = TestApp::spawn().await;
    // Billing answers, then the patient's insert hangs (its outbox table is locked) and the
    // client gives up: billing holds an account for a patient that was never stored.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let gave_up = app
        .client
        .post(app.url("/patients"))
        .header("idempotency-key", "retry-me")
        .timeout(std::time::Duration::from_secs(2))
        .json(&patient_body(1))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    assert_eq!(app.billing_rows().await, 1, "billing opened the account before the insert hung");
    lock.rollback().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.patient_rows().await, 0, "the dropped request stored nothing");

    // The retry reuses the key's patient id: billing returns the account it already has.
    let retried = post_with_key(&app, &app.client, "retry-me", &patient_body(1)).await;
    assert_eq!(retried.status(), 201, "the key was freed when the first request was dropped");
    let id = retried.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let account_patient: String =
        sqlx::query_scalar("SELECT patient_id::text FROM billing_accounts").fetch_one(&app.billing_db).await.unwrap();
    assert_eq!(account_patient, id, "the retry is the patient the account was opened for");
    assert_eq!((app.patient_rows().await, app.billing_rows().await), (1, 1), "no second patient, no orphan account");
}

#[tokio::test]
async fn a_retry_after_the_patient_was_deleted_is_409_and_the_key_keeps_nothing_of_the_patient() {
    let app = TestApp::spawn().await;
    let created = post_with_key(&app, &app.client, "gone-soon", &patient_body(1)).await;
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.client.delete(app.url(&format!("/patients/{id}"))).send().await.unwrap().status(), 204);
    let (response, location): (Option<Value>, Option<String>) =
        sqlx::query_as("SELECT response, location FROM idempotency_keys WHERE key = 'gone-soon'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((response, location), (None, None), "no stored copy of the deleted patient's data");

    // A late retry (a client that lost the 201 and retries within the 24 hours) does not bring
    // the deleted patient back; the key with another body is a 422, as ever.
    let retried = assert_problem(post_with_key(&app, &app.client, "gone-soon", &patient_body(1)).await, 409).await;
    assert!(retried["detail"].as_str().unwrap().contains("deleted"), "{retried}");
    assert_problem(post_with_key(&app, &app.client, "gone-soon", &patient_body(2)).await, 422).await;
    assert_eq!(app.patient_rows().await, 0, "no patient made again");
    assert_eq!(app.outbox_events().await.len(), 2, "the create's and the delete's events, none since");
    // A new key creates a patient as ever.
    assert_eq!(post_with_key(&app, &app.client, "new-key", &patient_body(1)).await.status(), 201);
}

#[tokio::test]
async fn a_key_older_than_24_hours_is_a_new_key_even_behind_a_backlog_of_expired_ones() {
    let app = TestApp::spawn().await;
    // 300 keys that expired long ago (more than two sweeps take), stored before ours.
    sqlx::query(
        "INSERT INTO idempotency_keys (subject, key, request_hash, patient_id, created_at)
         SELECT 'someone', 'k' || n, '\\x00', gen_random_uuid(), now() - interval '30 hours' - n * interval '1 second'
         FROM generate_series(1, 300) AS n",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(post_with_key(&app, &app.client, "old-key", &patient_body(1)).await.status(), 201);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old-key'")
        .execute(&app.db)
        .await
        .unwrap();

    let resp = post_with_key(&app, &app.client, "old-key", &patient_body(2)).await;

    assert_eq!(resp.status(), 201, "an expired key neither replays nor refuses another body");
    assert!(resp.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.patient_rows().await, 2);
}

#[tokio::test]
async fn keys_past_their_24_hours_and_the_responses_they_hold_are_swept_away() {
    let app = TestApp::spawn_with(|s| s.idempotency_sweep_secs = 1).await;
    assert_eq!(post_with_key(&app, &app.client, "fresh", &patient_body(1)).await.status(), 201);
    assert_eq!(post_with_key(&app, &app.client, "old", &patient_body(2)).await.status(), 201);
    // The second key was used 25 hours ago: its stored 201 (name, email, address) must go.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'")
        .execute(&app.db)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key").fetch_all(&app.db).await.unwrap();
        if keys == ["fresh"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {keys:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(app.patient_rows().await, 2, "the patients stay");
}
