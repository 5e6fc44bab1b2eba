//! The replica of patients: a deleted patient cannot book, and their future appointments are
//! cancelled (with events, and visible on the read side); old or repeated events change nothing.

use std::time::Duration;

use chrono::Duration as Span;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, problem, read_topic, rfc3339, tomorrow_at, TestApp};

#[tokio::test]
async fn a_deleted_patient_loses_future_appointments_and_cannot_book() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let bystander = app.known_patient().await;
    let clinician = Uuid::new_v4();
    let first = app.book(patient, clinician, tomorrow_at(9), 30).await.json::<Value>().await.unwrap();
    let second = app.book(patient, clinician, tomorrow_at(10), 30).await.json::<Value>().await.unwrap();
    let kept = app.book(bystander, clinician, tomorrow_at(11), 30).await.json::<Value>().await.unwrap();

    app.publish_patient(patient, "PATIENT_DELETED", 2).await;
    for a in [&first, &second] {
        let id = a["id"].as_str().unwrap().to_owned();
        eventually(Duration::from_secs(30), "the appointment is cancelled", || async {
            (app.status_of(&id).await == "CANCELLED").then_some(())
        })
        .await;
    }
    assert_eq!(app.status_of(kept["id"].as_str().unwrap()).await, "BOOKED");

    // The read side shows it: the two cancelled on the clinician's day, nothing upcoming for
    // the patient (an empty answer alone would prove nothing: the projection is checked first).
    let day = tomorrow_at(0).date_naive();
    let schedule = format!("/appointments/schedule?clinicianId={clinician}&date={day}");
    eventually(Duration::from_secs(30), "the projection shows the cancellations", || async {
        let entries: Vec<Value> = app.client.get(app.url(&schedule)).send().await.unwrap().json().await.unwrap();
        let statuses: Vec<&str> = entries.iter().map(|e| e["status"].as_str().unwrap()).collect();
        (statuses == ["CANCELLED", "CANCELLED", "BOOKED"]).then_some(())
    })
    .await;
    let upcoming: Vec<Value> = app
        .client
        .get(app.url(&format!("/appointments/upcoming?patientId={patient}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(upcoming.is_empty(), "{upcoming:?}");

    // Booking for the deleted patient: 422; a stale PATIENT_UPDATED does not bring them back.
    problem(app.book(patient, clinician, tomorrow_at(15), 30).await, 422).await;
    app.publish_patient(patient, "PATIENT_UPDATED", 1).await;
    app.publish_patient(bystander, "PATIENT_UPDATED", 2).await;
    eventually(Duration::from_secs(30), "the bystander's update is applied", || async {
        let seq: i64 =
            sqlx::query_scalar("SELECT sequence FROM patients WHERE id = $1").bind(bystander).fetch_one(&app.db).await.unwrap();
        (seq == 2).then_some(())
    })
    .await;
    problem(app.book(patient, clinician, tomorrow_at(15) + Span::hours(1), 30).await, 422).await;
    // Its cancellations are events like any other, with the reason: 3 bookings, 2 cancellations.
    let events = app.appointment_events(5).await;
    let cancellations: Vec<_> = events.iter().filter(|(_, e)| e.event_type == "APPOINTMENT_CANCELLED").collect();
    assert_eq!(cancellations.len(), 2);
    for (key, e) in cancellations {
        assert_eq!(e.cancel_reason, "PATIENT_DELETED");
        assert_eq!(e.sequence, 2);
        assert!([&first, &second].iter().any(|a| a["id"] == key.as_str()));
    }
}

#[tokio::test]
async fn an_appointment_under_way_when_its_patient_is_deleted_cannot_be_moved_into_the_future() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let clinician = Uuid::new_v4();
    // Room for the booking to arrive while still in the future (times are sent in whole seconds).
    let starts = chrono::Utc::now() + Span::seconds(10);
    let booked = app.book(patient, clinician, starts, 30).await;
    assert_eq!(booked.status(), 201);
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let under_way = (starts - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(under_way).await;

    app.publish_patient(patient, "PATIENT_DELETED", 2).await;
    eventually(Duration::from_secs(30), "the deletion is applied", || async {
        let deleted: bool =
            sqlx::query_scalar("SELECT deleted FROM patients WHERE id = $1").bind(patient).fetch_one(&app.db).await.unwrap();
        deleted.then_some(())
    })
    .await;
    assert_eq!(app.status_of(&id).await, "BOOKED", "under way, so not cancelled");

    let tomorrow = json!({"startsAt": rfc3339(tomorrow_at(9)), "endsAt": rfc3339(tomorrow_at(9) + Span::minutes(30))});
    // A stale version is still a 412 first; then the deletion is the reason.
    problem(app.command(&id, "reschedule", Some("\"7\""), Some(tomorrow.clone())).await, 412).await;
    let refused = problem(app.command(&id, "reschedule", None, Some(tomorrow)).await, 422).await;
    assert!(refused["detail"].as_str().unwrap().contains("the patient was deleted"), "{refused}");
    let (version, still_starts): (i64, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT version, starts_at FROM appointments WHERE id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((version, still_starts.timestamp()), (1, starts.timestamp()), "nothing changed");
    assert_eq!(app.events_of(&id).await.len(), 1, "no event but the booking");
    // What happens to it now is still recorded.
    assert_eq!(app.command(&id, "check-in", None, None).await.status(), 200);
}

#[tokio::test]
async fn an_undecodable_patient_record_goes_to_the_dead_letter_topic_and_the_replica_goes_on() {
    let app = TestApp::spawn().await;
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &app.bootstrap).create().unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&app.patient_topic).key("x").payload(&b"\xff\xff not protobuf"[..]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // The next patient still arrives, and the bad record waits on the dead-letter topic.
    app.known_patient().await;
    let dead = read_topic(&app.bootstrap, &format!("{}.DLT", app.patient_topic), 1).await;
    assert_eq!(common::kafka::header(&dead[0], "dlt-group"), Some("appointment-service"));
    assert_eq!(common::kafka::header(&dead[0], "dlt-reason"), Some("not a PatientEvent"));
}
