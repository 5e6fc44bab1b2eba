//! Journey: a clinician's token from Keycloak, a patient created through the gateway, then an
//! appointment booked, seen on the schedule (waiting for its own change), rescheduled and
//! cancelled — all through the gateway onto the real services, the patient reaching
//! appointment-service over the real `patient` topic — and the patient's mails in a real mail
//! server (welcome, confirmation, change, cancellation, a reminder), each exactly once.
//! Deleting the patient cancels what is left, and mails nobody.

mod support;

use std::time::Duration;

use chrono::{Duration as Span, SecondsFormat, Utc};
use dev_stack::{
    kafka::Kafka,
    keycloak::{Keycloak, ANALYST, CLINICIAN, REALM},
    mailpit::Mailpit,
};
use serde_json::{json, Value};
use support::*;

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
async fn a_clinician_books_sees_reschedules_and_cancels_through_the_gateway() {
    let kc = Keycloak::shared_for_tests();
    let args = kafka_args(&Kafka::shared_for_tests().bootstrap_servers(), &unique_topic());
    let appointment_topic = format!("appointment-{}", uuid::Uuid::new_v4().simple());
    let (_billing, grpc) = spawn_billing(args.clone()).await;
    let patients = spawn_patients(&grpc, args.clone()).await;
    let appointments = spawn_appointments(args.clone(), &appointment_topic).await;
    let topic = appointment_topic.clone();
    let analytics = spawn_analytics_with(None, args.clone(), move |s| s.appointment_topic = topic).await;
    let mailpit = Mailpit::start_ephemeral().unwrap();
    // Reminders 5 s ahead, so one arrives within the test.
    let _notifications =
        spawn_notifications(None, args, &appointment_topic, mailpit.smtp_port(), |s| s.reminder_before_secs = 5).await;
    let mut settings = gateway::config::Settings::for_issuer(kc.issuer(REALM), format!("http://127.0.0.1:{}", patients.port));
    settings.appointment_service_url = format!("http://127.0.0.1:{}", appointments.port);
    settings.analytics_service_url = format!("http://127.0.0.1:{}", analytics.port);
    let app = gateway::startup::Application::build(settings).await.unwrap();
    let gw = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));

    let clinician_token = kc.user_token(CLINICIAN).await.unwrap();
    let http = reqwest::Client::new();
    let as_clinician =
        |method: reqwest::Method, path: &str| http.request(method, format!("{gw}{path}")).bearer_auth(&clinician_token);
    let patient_email = patient_body(1)["email"].as_str().unwrap().to_owned();
    let created = as_clinician(reqwest::Method::POST, "/api/patients").json(&patient_body(1)).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let patient = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    // The clinician books themselves (their Keycloak user id); the patient reaches the service
    // over Kafka, so the first tries may be 422 until then.
    let me = subject(&clinician_token);
    let starts = (Utc::now() + Span::days(2)).date_naive().and_hms_opt(9, 0, 0).unwrap().and_utc();
    let body = json!({"patientId": patient, "clinicianId": me, "startsAt": rfc3339(starts), "endsAt": rfc3339(starts + Span::minutes(30))});
    let booked = eventually(Duration::from_secs(30), "the booking is accepted", || async {
        let resp = as_clinician(reqwest::Method::POST, "/api/appointments").json(&body).send().await.unwrap();
        match resp.status().as_u16() {
            201 => Some(resp),
            422 => None,
            other => panic!("booking answered {other}: {}", resp.text().await.unwrap()),
        }
    })
    .await;
    let location = booked.headers()["location"].to_str().unwrap().to_owned();
    let token = booked.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/appointments/{id}"), "Location is usable through the gateway");
    let got = as_clinician(reqwest::Method::GET, &location).send().await.unwrap();
    assert_eq!(got.headers()["etag"], "\"1\"");

    // The schedule shows it at once when asked to wait for the booking.
    let schedule = format!("/api/appointments/schedule?clinicianId={me}&date={}", starts.date_naive());
    let seen = as_clinician(reqwest::Method::GET, &schedule).header("x-wait-for", &token).send().await.unwrap();
    assert_eq!(seen.status(), 200);
    let entries: Vec<Value> = seen.json().await.unwrap();
    assert_eq!(entries.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), [id.as_str()]);

    // Reschedule (If-Match the version we hold), then cancel.
    let later = starts + Span::hours(2);
    let moved = as_clinician(reqwest::Method::POST, &format!("/api/appointments/{id}/reschedule"))
        .header("if-match", "\"1\"")
        .json(&json!({"startsAt": rfc3339(later), "endsAt": rfc3339(later + Span::minutes(30))}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    let token = moved.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let entries: Vec<Value> =
        as_clinician(reqwest::Method::GET, &schedule).header("x-wait-for", &token).send().await.unwrap().json().await.unwrap();
    assert_eq!(entries[0]["startsAt"], rfc3339(later));
    let stale = as_clinician(reqwest::Method::POST, &format!("/api/appointments/{id}/cancel"))
        .header("if-match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let cancelled = as_clinician(reqwest::Method::POST, &format!("/api/appointments/{id}/cancel"))
        .header("if-match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let token = cancelled.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let upcoming: Vec<Value> = as_clinician(reqwest::Method::GET, &format!("/api/appointments/upcoming?patientId={patient}"))
        .header("x-wait-for", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(upcoming.is_empty());

    // The mails so far: welcome, confirmation, change, cancellation — once each.
    let expect = |kinds: &[(&str, usize)]| {
        let kinds: Vec<(String, usize)> = kinds.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        let (mailpit, email) = (&mailpit, patient_email.clone());
        async move {
            eventually(Duration::from_secs(60), "the patient's mails arrive", || {
                let (kinds, email) = (kinds.clone(), email.clone());
                async move {
                    let got = mails(mailpit, Some(&email)).await;
                    let count = |needle: &str| got.iter().filter(|m| m.subject.contains(needle)).count();
                    kinds.iter().all(|(k, n)| count(k) == *n).then_some(got)
                }
            })
            .await
        }
    };
    expect(&[("Welcome", 1), ("is booked", 1), ("has moved", 1), ("is cancelled", 1)]).await;

    // Booked 12 s ahead: its reminder (5 s before) arrives.
    let soon = Utc::now() + Span::seconds(12);
    let body =
        json!({"patientId": patient, "clinicianId": me, "startsAt": rfc3339(soon), "endsAt": rfc3339(soon + Span::minutes(15))});
    assert_eq!(as_clinician(reqwest::Method::POST, "/api/appointments").json(&body).send().await.unwrap().status(), 201);
    expect(&[("is booked", 2), ("Reminder", 1)]).await;

    // 50 clinicians' clients at once for one slot, through the gateway: one 201, 49 × 409.
    let contested = starts + Span::days(5);
    let body = json!({"patientId": patient, "clinicianId": me, "startsAt": rfc3339(contested), "endsAt": rfc3339(contested + Span::minutes(20))});
    let attempts = (0..50).map(|_| as_clinician(reqwest::Method::POST, "/api/appointments").json(&body).send());
    let statuses: Vec<u16> =
        futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 49, "{statuses:?}");

    // An analyst has no appointment role: refused at the gateway.
    let analyst = kc.user_token(ANALYST).await.unwrap();
    let refused = http.get(format!("{gw}{schedule}")).bearer_auth(&analyst).send().await.unwrap();
    assert_eq!(refused.status(), 403);

    // Deleting the patient (admin's role) cancels their remaining future appointment.
    let next = starts + Span::days(1);
    let body =
        json!({"patientId": patient, "clinicianId": me, "startsAt": rfc3339(next), "endsAt": rfc3339(next + Span::minutes(30))});
    let second = as_clinician(reqwest::Method::POST, "/api/appointments").json(&body).send().await.unwrap();
    assert_eq!(second.status(), 201);
    let second = second.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    expect(&[("is booked", 4)]).await;
    let admin = kc.service_token().await.unwrap();
    let deleted = http.delete(format!("{gw}/api/patients/{patient}")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    eventually(Duration::from_secs(30), "the deleted patient's appointment is cancelled on the read side", || async {
        let resp = as_clinician(
            reqwest::Method::GET,
            &format!("/api/appointments/schedule?clinicianId={me}&date={}", next.date_naive()),
        )
        .send()
        .await
        .unwrap();
        let entries: Vec<Value> = resp.json().await.unwrap();
        entries.iter().any(|e| e["id"] == second.as_str() && e["status"] == "CANCELLED").then_some(())
    })
    .await;
    // Every mail exactly once (a distinct Message-ID each), none about the deletion's cancellation.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = expect(&[("Welcome", 1), ("is booked", 4), ("has moved", 1), ("is cancelled", 1), ("Reminder", 1)]).await;
    let ids: std::collections::HashSet<&str> = all.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "{all:?}");
    assert_eq!(all.len(), 8, "{all:?}");

    // Analytics counted the appointments as the write side has them (4 booked; cancelled: one by
    // request, two or three by the deletion, depending on whether the soon one had started), by
    // the month they start.
    let (booked, cancelled): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 'CANCELLED') FROM appointments")
            .fetch_one(&appointments.db)
            .await
            .unwrap();
    assert_eq!(booked, 4);
    eventually(Duration::from_secs(30), "analytics counts the appointments", || async {
        let summary: Value =
            http.get(format!("{gw}/api/analytics/summary")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        let months = summary["appointmentsPerMonth"].as_object()?.clone();
        let total = |field: &str| months.values().map(|m| m[field].as_i64().unwrap_or(0)).sum::<i64>();
        (total("booked") == booked && total("cancelled") == cancelled && total("noShow") == 0).then_some(())
    })
    .await;
}
