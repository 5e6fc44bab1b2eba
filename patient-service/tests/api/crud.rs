//! GET / PUT / DELETE of one patient, and its bill.

use serde_json::{json, Value};

use crate::helpers::{assert_problem, patient_body, TestApp};

#[tokio::test]
async fn get_returns_the_patient_404_for_unknown_and_400_for_malformed_ids() {
    let app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;

    let found: Value = app.client.get(app.url(&format!("/patients/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(found["id"], id.as_str());
    assert_eq!(found["address"], "1 Test Street, Springfield");

    let unknown = app.client.get(app.url(&format!("/patients/{}", uuid::Uuid::new_v4()))).send().await.unwrap();
    assert_problem(unknown, 404).await;
    let malformed = app.client.get(app.url("/patients/not-a-uuid")).send().await.unwrap();
    assert_problem(malformed, 400).await;
}

#[tokio::test]
async fn update_returns_200_changes_the_row_and_records_an_event() {
    let app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;
    let mut body = patient_body(1);
    body["address"] = json!("2 New Road");
    body.as_object_mut().unwrap().remove("registeredDate");

    let resp = app.client.put(app.url(&format!("/patients/{id}"))).json(&body).send().await.unwrap();

    assert_eq!(resp.status(), 200);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["address"], "2 New Road");
    assert_eq!(updated["registeredDate"], "2024-01-10", "omitted registeredDate is kept");
    let stored: String = sqlx::query_scalar("SELECT address FROM patients").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, "2 New Road");
    let kinds: Vec<String> = app.outbox_events().await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(kinds, ["PATIENT_CREATED", "PATIENT_UPDATED"]);
}

#[tokio::test]
async fn update_rejections_leave_the_row_unchanged() {
    let app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;
    app.create_patient(&patient_body(2)).await;
    let url = app.url(&format!("/patients/{id}"));

    let mut invalid = patient_body(1);
    invalid["email"] = json!("broken");
    let problem = assert_problem(app.client.put(&url).json(&invalid).send().await.unwrap(), 400).await;
    assert!(problem["errors"]["email"].is_string());

    let mut taken = patient_body(1);
    taken["email"] = json!("patient2@example.com");
    assert_problem(app.client.put(&url).json(&taken).send().await.unwrap(), 409).await;

    // No registeredDate sent: the stored 2024-01-10 is kept, and a birth after it is refused.
    let mut born_later = patient_body(1);
    born_later.as_object_mut().unwrap().remove("registeredDate");
    born_later["dateOfBirth"] = json!("2024-01-11");
    let problem = assert_problem(app.client.put(&url).json(&born_later).send().await.unwrap(), 400).await;
    assert_eq!(problem["errors"]["registeredDate"], "must not be before dateOfBirth");
    let born: String = sqlx::query_scalar("SELECT date_of_birth::text FROM patients WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(born, "1985-06-15");

    let unknown = app.url(&format!("/patients/{}", uuid::Uuid::new_v4()));
    assert_problem(app.client.put(&unknown).json(&patient_body(3)).send().await.unwrap(), 404).await;

    let email: String =
        sqlx::query_scalar("SELECT email FROM patients WHERE id = $1::uuid").bind(&id).fetch_one(&app.db).await.unwrap();
    assert_eq!(email, "patient1@example.com");
    assert_eq!(app.outbox_events().await.len(), 2, "only the two creates");
}

#[tokio::test]
async fn delete_returns_204_removes_the_row_and_records_an_event() {
    let app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;
    let url = app.url(&format!("/patients/{id}"));

    let resp = app.client.delete(&url).send().await.unwrap();

    assert_eq!(resp.status(), 204);
    assert_eq!(app.patient_rows().await, 0);
    let events = app.outbox_events().await;
    assert_eq!((events[1].event_type.as_str(), events[1].patient_id.as_str()), ("PATIENT_DELETED", id.as_str()));
    assert_problem(app.client.delete(&url).send().await.unwrap(), 404).await;
    assert_problem(app.client.get(&url).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn if_match_makes_a_stale_change_a_412_that_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;
    let url = app.url(&format!("/patients/{id}"));
    let etag = |resp: &reqwest::Response| resp.headers()["etag"].to_str().unwrap().to_owned();
    let read = app.client.get(&url).send().await.unwrap();
    assert_eq!(etag(&read), "\"1\"");

    // Two clients read version 1; the first change wins and moves the version on.
    let mut first = patient_body(1);
    first["address"] = json!("2 First Road");
    let changed = app.client.put(&url).header("if-match", "\"1\"").json(&first).send().await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(etag(&changed), "\"2\"");
    let mut second = patient_body(1);
    second["address"] = json!("3 Second Road");
    let stale = app.client.put(&url).header("if-match", "\"1\"").json(&second).send().await.unwrap();
    let problem = assert_problem(stale, 412).await;
    assert_eq!(problem["currentVersion"], 2);
    assert_problem(app.client.delete(&url).header("if-match", "\"1\"").send().await.unwrap(), 412).await;
    assert_problem(app.client.put(&url).header("if-match", "W/\"2\"").json(&second).send().await.unwrap(), 412).await;
    assert_problem(app.client.put(&url).header("if-match", "2").json(&second).send().await.unwrap(), 400).await;
    let unknown = app.url(&format!("/patients/{}", uuid::Uuid::new_v4()));
    assert_problem(app.client.delete(&unknown).header("if-match", "\"1\"").send().await.unwrap(), 404).await;

    let stored: String = sqlx::query_scalar("SELECT address FROM patients").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, "2 First Road", "the stale change was not applied");
    let kinds: Vec<String> = app.outbox_events().await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(kinds, ["PATIENT_CREATED", "PATIENT_UPDATED"]);
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE outcome = 412").fetch_one(&app.db).await.unwrap();
    assert_eq!(refused, 3, "each refused change is in the audit trail");

    // The current version, or any (`*`), goes through.
    let current = app.client.put(&url).header("if-match", "\"5\", \"2\"").json(&second).send().await.unwrap();
    assert_eq!(current.status(), 200);
    assert_eq!(app.client.delete(&url).header("if-match", "*").send().await.unwrap().status(), 204);
    assert_eq!(app.patient_rows().await, 0);
}

#[tokio::test]
async fn two_changes_of_one_version_at_once_one_wins_and_the_other_is_412() {
    let app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;
    let url = app.url(&format!("/patients/{id}"));
    // The row held by this test, so both changes are under way before either can take it.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM patients WHERE id = $1::uuid FOR UPDATE").bind(&id).execute(&mut *lock).await.unwrap();
    let change = |address: &'static str| {
        let (client, url) = (app.client.clone(), url.clone());
        let mut body = patient_body(1);
        body["address"] = json!(address);
        tokio::spawn(async move { client.put(url).header("if-match", "\"1\"").json(&body).send().await.unwrap().status() })
    };
    let (a, b) = (change("4 One Road"), change("5 Other Road"));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    lock.rollback().await.unwrap();
    let mut statuses = [a.await.unwrap().as_u16(), b.await.unwrap().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "one change of version 1 wins, the other finds version 2");
    let version: i64 =
        sqlx::query_scalar("SELECT version FROM patients WHERE id = $1::uuid").bind(&id).fetch_one(&app.db).await.unwrap();
    assert_eq!(version, 2);
    assert_eq!(app.outbox_events().await.len(), 2, "the creation and one update");
}

#[tokio::test]
async fn bill_returns_the_billing_account_from_billing_service() {
    let app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;

    let resp = app.client.get(app.url(&format!("/patients/{id}/bill"))).send().await.unwrap();

    assert_eq!(resp.status(), 200);
    let bill: Value = resp.json().await.unwrap();
    let account_id: String =
        sqlx::query_scalar("SELECT id::text FROM billing_accounts").fetch_one(&app.billing_db).await.unwrap();
    assert_eq!((bill["accountId"].as_str(), bill["status"].as_str()), (Some(account_id.as_str()), Some("PENDING")));
    assert_eq!(bill["patientId"], id.as_str());

    let unknown = app.client.get(app.url(&format!("/patients/{}/bill", uuid::Uuid::new_v4()))).send().await.unwrap();
    assert_problem(unknown, 404).await;
}

#[tokio::test]
async fn bill_returns_503_when_billing_is_down() {
    let mut app = TestApp::spawn().await;
    let id = app.create_patient(&patient_body(1)).await;
    app.stop_billing().await;
    let resp = app.client.get(app.url(&format!("/patients/{id}/bill"))).send().await.unwrap();
    assert_problem(resp, 503).await;
}

#[tokio::test]
async fn health_ready_checks_the_database() {
    let app = TestApp::spawn().await;
    let ready = app.client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["database"], "UP");
}

#[tokio::test]
async fn events_carry_the_patients_sequence_and_the_relay_claims_one_per_patient() {
    let app = TestApp::spawn().await;
    let a = app.create_patient(&patient_body(1)).await;
    let url = app.url(&format!("/patients/{a}"));
    for street in ["2 Second Street", "3 Third Street"] {
        let mut changed = patient_body(1);
        changed["address"] = serde_json::json!(street);
        assert_eq!(app.client.put(&url).json(&changed).send().await.unwrap().status(), 200);
    }
    let b = app.create_patient(&patient_body(2)).await;
    assert_eq!(app.client.delete(&url).send().await.unwrap().status(), 204);

    let events: Vec<(String, String, u64)> =
        app.outbox_events().await.into_iter().map(|e| (e.patient_id, e.event_type, e.sequence)).collect();
    let expected = [
        (&a, "PATIENT_CREATED", 1),
        (&a, "PATIENT_UPDATED", 2),
        (&a, "PATIENT_UPDATED", 3),
        (&b, "PATIENT_CREATED", 1),
        (&a, "PATIENT_DELETED", 4),
    ];
    let expected: Vec<(String, String, u64)> = expected.iter().map(|(p, k, s)| (p.to_string(), k.to_string(), *s)).collect();
    assert_eq!(events, expected);

    // Nothing sent yet: the relay may take A's first event and B's, never A's later ones.
    let mut tx = app.db.begin().await.unwrap();
    let claimed: Vec<String> =
        patient_service::outbox::OUTBOX.claim(&mut tx, 100).await.unwrap().iter().map(|r| r.key.to_string()).collect();
    assert_eq!(claimed, [a.clone(), b]);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_request_cut_by_the_time_limit_is_in_the_audit_trail_as_the_503_it_got() {
    let app = TestApp::spawn_with(|s| s.edge.request_timeout_ms = 1_500).await;
    let id = app.create_patient(&patient_body(1)).await;
    // The patients table is locked, so the read waits past the service's time limit.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE patients IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let resp = app.client.get(app.url(&format!("/patients/{id}"))).send().await.unwrap();
    assert_problem(resp, 503).await;
    lock.rollback().await.unwrap();

    let (action, patient): (String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT action, patient_id FROM audit_log WHERE outcome = 503").fetch_one(&app.db).await.unwrap();
    assert_eq!(action, "patient.read");
    assert_eq!(patient.map(|p| p.to_string()), Some(id));
}
