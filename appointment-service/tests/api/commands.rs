//! The write side: bookings and their invariants (enforced by the database), the transition
//! table, optimistic concurrency, and the events every change writes.

use chrono::{Duration, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use appointment_service::domain::{Status, TRANSITIONS};
use dev_stack::keycloak::{Keycloak, ANALYST, CLINICIAN};

use crate::helpers::{booking, client_with, problem, rfc3339, soon, tomorrow_at, TestApp};

#[tokio::test]
async fn a_booking_needs_a_known_patient_a_future_slot_and_a_free_clinician() {
    let app = TestApp::spawn().await;
    let (clinician, other_clinician) = (Uuid::new_v4(), Uuid::new_v4());
    let nine = tomorrow_at(9);

    // Unknown patient: 422, nothing stored.
    let body = problem(app.book(Uuid::new_v4(), clinician, nine, 30).await, 422).await;
    assert!(body["detail"].as_str().unwrap().contains("not known"));
    let patient = app.known_patient().await;

    // Bad input: every field named, nothing stored.
    let past = problem(app.book(patient, clinician, Utc::now() - Duration::hours(1), 30).await, 400).await;
    assert_eq!(past["errors"]["startsAt"], "must be in the future");
    let bad =
        app.client.post(app.url("/appointments")).json(&json!({"patientId": "42", "startsAt": "tomorrow"})).send().await.unwrap();
    let bad = problem(bad, 400).await;
    for field in ["patientId", "clinicianId", "startsAt", "endsAt"] {
        assert!(bad["errors"][field].is_string(), "{field}: {bad}");
    }
    let not_json = app.client.post(app.url("/appointments")).body("{").header("content-type", "application/json");
    problem(not_json.send().await.unwrap(), 400).await;
    assert_eq!(app.appointment_rows().await, 0);

    let booked = app.book(patient, clinician, nine, 30).await;
    assert_eq!(booked.status(), 201);
    assert_eq!(booked.headers()["etag"], "\"1\"");
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // (Location is checked by the journey through the gateway.)

    // Overlapping the clinician's slot: 409 naming the appointment in the way.
    let clash = problem(app.book(patient, clinician, nine + Duration::minutes(15), 30).await, 409).await;
    assert_eq!(clash["conflictingAppointmentId"], id.as_str());
    // Another clinician at the same time, and the same clinician right after: fine.
    assert_eq!(app.book(patient, other_clinician, nine, 30).await.status(), 201);
    assert_eq!(app.book(patient, clinician, nine + Duration::minutes(30), 30).await.status(), 201);
    assert_eq!(app.appointment_rows().await, 3);

    // A cancelled appointment frees its slot.
    assert_eq!(app.command(&id, "cancel", None, None).await.status(), 200);
    assert_eq!(app.book(patient, clinician, nine, 30).await.status(), 201);
}

#[tokio::test]
async fn fifty_concurrent_bookings_of_one_slot_give_exactly_one_201_and_49_409s_round_after_round() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    // Several rounds: without the schedule lock, concurrent inserts into the exclusion constraint
    // deadlock now and then (a 500), and the pool drains while PostgreSQL breaks the cycles.
    for round in 0..5 {
        let clinician = Uuid::new_v4();
        let slot = tomorrow_at(10);
        let attempts = (0..50).map(|_| {
            let (client, url) = (app.client.clone(), app.url("/appointments"));
            async move { client.post(url).json(&booking(patient, clinician, slot, 20)).send().await.unwrap() }
        });
        let answers = futures::future::join_all(attempts).await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "round {round}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 49, "round {round}: {statuses:?}");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM appointments WHERE clinician_id = $1")
            .bind(clinician)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(rows, 1);
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 5, "one booking per round, one event each");
}

#[tokio::test]
async fn status_changes_follow_the_table_and_if_match_refuses_stale_versions() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let booked = app.book(patient, Uuid::new_v4(), tomorrow_at(11), 30).await;
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // A check-in a day ahead is refused (it opens an hour before the start) and changes nothing.
    let early = problem(app.command(&id, "check-in", None, None).await, 409).await;
    assert!(early["detail"].as_str().unwrap().contains("60 minutes before"), "{early}");

    // Reschedule based on version 1 (to ten minutes from now): fine, now version 2; again based
    // on 1: 412, nothing changes.
    let soon = soon();
    let later = json!({"startsAt": rfc3339(soon), "endsAt": rfc3339(soon + Duration::minutes(45))});
    let moved = app.command(&id, "reschedule", Some("\"1\""), Some(later.clone())).await;
    assert_eq!(moved.status(), 200);
    assert_eq!(moved.headers()["etag"], "\"2\"");
    assert_eq!(moved.headers()["x-consistency-token"].to_str().unwrap(), format!("{id}:2"));
    let stale = problem(app.command(&id, "cancel", Some("\"1\""), None).await, 412).await;
    assert_eq!(stale["currentVersion"], 2);
    assert_eq!(app.status_of(&id).await, "BOOKED");
    problem(app.command(&id, "cancel", Some("1"), None).await, 400).await;

    // booked → checked-in → completed; nothing else from there.
    problem(app.command(&id, "complete", None, None).await, 409).await;
    problem(app.command(&id, "no-show", None, None).await, 409).await; // not started yet
    assert_eq!(app.command(&id, "check-in", Some("\"2\""), None).await.status(), 200);
    let late_cancel = problem(app.command(&id, "cancel", None, None).await, 409).await;
    assert!(late_cancel["detail"].as_str().unwrap().contains("CHECKED_IN"), "{late_cancel}");
    problem(app.command(&id, "reschedule", None, Some(later)).await, 409).await;
    assert_eq!(app.command(&id, "complete", Some("*"), None).await.status(), 200);
    assert_eq!(app.status_of(&id).await, "COMPLETED");

    // One event per change, sequences 1..4, in order.
    let events = app.events_of(&id).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(kinds, ["APPOINTMENT_BOOKED", "APPOINTMENT_RESCHEDULED", "APPOINTMENT_CHECKED_IN", "APPOINTMENT_COMPLETED"]);
    for (n, (_, sequence, _)) in events.iter().enumerate() {
        assert!(*sequence == n as u64 + 1 || *sequence == 0, "{events:?}"); // 0: already published
    }
    problem(app.command(&Uuid::new_v4().to_string(), "cancel", None, None).await, 404).await;
    problem(app.command("not-a-uuid", "cancel", None, None).await, 400).await;
}

#[tokio::test]
async fn a_no_show_frees_the_rest_of_its_slot_for_another_patient() {
    let app = TestApp::spawn().await;
    let (absent, walk_in) = (app.known_patient().await, app.known_patient().await);
    let clinician = Uuid::new_v4();
    // Starts in two seconds (times are whole seconds), lasts half an hour.
    let starts = Utc::now() + Duration::seconds(3);
    let booked = app.book(absent, clinician, starts, 30).await;
    assert_eq!(booked.status(), 201);
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let overlapping = Utc::now() + Duration::minutes(5);
    problem(app.book(walk_in, clinician, overlapping, 15).await, 409).await;

    tokio::time::sleep((starts - Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_secs(1)).await;
    assert_eq!(app.command(&id, "no-show", None, None).await.status(), 200);
    let walked_in = app.book(walk_in, clinician, overlapping, 15).await;
    assert_eq!(walked_in.status(), 201, "the clinician is free again once the patient did not come");
    let blocking: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM appointments WHERE clinician_id = $1 AND status NOT IN ('CANCELLED', 'NO_SHOW')",
    )
    .bind(clinician)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(blocking, 1);
}

#[tokio::test]
async fn a_booked_appointment_that_has_ended_can_only_be_marked_a_no_show() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let booked = app.book(patient, Uuid::new_v4(), tomorrow_at(9), 30).await;
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // Yesterday's appointment (the trigger refuses slots in the past: set aside for the setup).
    let db = &app.db;
    sqlx::query("ALTER TABLE appointments DISABLE TRIGGER appointments_guard").execute(db).await.unwrap();
    sqlx::query(
        "UPDATE appointments SET starts_at = now() - interval '25 hours', ends_at = now() - interval '24 hours' WHERE id = $1",
    )
    .bind(Uuid::parse_str(&id).unwrap())
    .execute(db)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE appointments ENABLE TRIGGER appointments_guard").execute(db).await.unwrap();

    let soon = soon();
    let slot = json!({"startsAt": rfc3339(soon), "endsAt": rfc3339(soon + Duration::minutes(30))});
    for (command, body) in [("cancel", None), ("check-in", None), ("reschedule", Some(slot))] {
        let refused = problem(app.command(&id, command, Some("\"1\""), body).await, 409).await;
        assert!(refused["detail"].as_str().unwrap().contains("has ended"), "{command}: {refused}");
    }
    assert_eq!(app.status_of(&id).await, "BOOKED", "nothing changed");
    assert_eq!(app.events_of(&id).await.len(), 1, "no event but the booking's");
    assert_eq!(app.command(&id, "no-show", Some("\"1\""), None).await.status(), 200);
    assert_eq!(app.status_of(&id).await, "NO_SHOW");
}

#[tokio::test]
async fn the_database_itself_refuses_what_the_api_refuses() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let clinician = Uuid::new_v4();
    let resp = app.book(patient, clinician, tomorrow_at(8), 60).await;
    let id: Uuid = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().parse().unwrap();
    let db = &app.db;

    // The transition table in the database is the code's.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT from_status, to_status FROM appointment_transitions").fetch_all(db).await.unwrap();
    let mut in_db: Vec<(String, String)> = rows;
    in_db.sort();
    let mut in_code: Vec<(String, String)> = TRANSITIONS.iter().map(|(a, b)| (a.as_str().into(), b.as_str().into())).collect();
    in_code.sort();
    assert_eq!(in_db, in_code);
    for from in Status::ALL {
        for to in Status::ALL {
            assert_eq!(from.can_become(to), in_code.contains(&(from.as_str().into(), to.as_str().into())));
        }
    }

    // A statement that skips the API meets the same rules.
    let overlap =
        sqlx::query("INSERT INTO appointments (id, patient_id, clinician_id, starts_at, ends_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(Uuid::new_v4())
            .bind(patient)
            .bind(clinician)
            .bind(tomorrow_at(8) + Duration::minutes(30))
            .bind(tomorrow_at(10))
            .execute(db)
            .await
            .unwrap_err();
    assert_eq!(overlap.as_database_error().unwrap().code().as_deref(), Some("23P01"));
    let past =
        sqlx::query("UPDATE appointments SET starts_at = now() - interval '1 hour' WHERE id = $1").bind(id).execute(db).await;
    assert!(past.unwrap_err().to_string().contains("future"));
    let skip = sqlx::query("UPDATE appointments SET status = 'COMPLETED' WHERE id = $1").bind(id).execute(db).await;
    assert!(skip.unwrap_err().to_string().contains("cannot go from BOOKED to COMPLETED"));
    assert_eq!(app.status_of(&id.to_string()).await, "BOOKED");
}

#[tokio::test]
async fn callers_are_checked_by_the_service_itself() {
    let app = TestApp::spawn().await;
    let kc = Keycloak::shared_for_tests();
    let anonymous = reqwest::Client::new().get(app.url("/appointments/schedule")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let analyst = client_with(&kc.user_token(ANALYST).await.unwrap());
    let denied = analyst.post(app.url("/appointments")).json(&json!({})).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    assert!(denied.headers()["www-authenticate"].to_str().unwrap().contains("appointments.write"));
    // The clinician has both appointment roles.
    let clinician = client_with(&kc.user_token(CLINICIAN).await.unwrap());
    let patient = app.known_patient().await;
    let booked = clinician
        .post(app.url("/appointments"))
        .json(&booking(patient, Uuid::new_v4(), tomorrow_at(12), 30))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), 201);
    assert_eq!(app.appointment_rows().await, 1);
    let wrong_method = app.client.delete(app.url("/appointments")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
}
