//! The read side: schedules from the projection of the `appointment` topic, their freshness
//! headers, and read-your-writes through a command's consistency token.

use chrono::Duration as Span;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{problem, rfc3339, soon, tomorrow_at, TestApp};

/// GET `path` waiting for `token`; the entries and the response's headers.
async fn query(app: &TestApp, path: &str, token: Option<&str>) -> (Vec<Value>, reqwest::header::HeaderMap) {
    let mut req = app.client.get(app.url(path));
    if let Some(token) = token {
        req = req.header("x-wait-for", token);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let headers = resp.headers().clone();
    (resp.json().await.unwrap(), headers)
}

#[tokio::test]
async fn a_query_waits_for_the_commands_token_and_reports_its_freshness() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let clinician = Uuid::new_v4();
    let day = tomorrow_at(0).date_naive();
    let booked = app.book(patient, clinician, tomorrow_at(9), 30).await;
    let token = booked.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    // Read-your-writes: the first query after the command already shows it.
    let schedule = format!("/appointments/schedule?clinicianId={clinician}&date={day}");
    let (entries, headers) = query(&app, &schedule, Some(&token)).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["id"], id.as_str());
    assert_eq!(entries[0]["status"], "BOOKED");
    assert!(headers["x-projection-position"].to_str().unwrap().parse::<i64>().unwrap() >= 1);
    assert!(headers.contains_key("x-projection-last-event-at"));
    assert_eq!(headers["x-total-count"], "1");

    // Rescheduled to the next day: gone from this day, on the week, with the new time.
    let next_day = tomorrow_at(9) + Span::days(1);
    let body = json!({"startsAt": rfc3339(next_day), "endsAt": rfc3339(next_day + Span::minutes(30))});
    let moved = app.command(&id, "reschedule", None, Some(body)).await;
    let token = moved.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let (entries, _) = query(&app, &schedule, Some(&token)).await;
    assert!(entries.is_empty(), "{entries:?}");
    let (week, _) = query(&app, &format!("{schedule}&view=week"), Some(&token)).await;
    assert_eq!(week.len(), 1);
    assert_eq!(week[0]["version"], 2);
    let (upcoming, _) = query(&app, &format!("/appointments/upcoming?patientId={patient}"), Some(&token)).await;
    assert_eq!(upcoming.len(), 1);

    // Cancelled: still on the clinician's week (as CANCELLED), no longer upcoming.
    let cancelled = app.command(&id, "cancel", None, None).await;
    let token = cancelled.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let (week, _) = query(&app, &format!("{schedule}&view=week"), Some(&token)).await;
    assert_eq!(week[0]["status"], "CANCELLED");
    let (upcoming, _) = query(&app, &format!("/appointments/upcoming?patientId={patient}"), Some(&token)).await;
    assert!(upcoming.is_empty());

    // A token of a change never made (version 99, another appointment): 400 at once, no wait.
    for never in [format!("{id}:99"), format!("{}:1", Uuid::new_v4())] {
        let refused = app.client.get(app.url(&schedule)).header("x-wait-for", &never).send().await.unwrap();
        assert!(problem(refused, 400).await["detail"].as_str().unwrap().contains("not made"));
    }
    // A change made that the projection never reaches (written without its event, past the
    // status trigger): 503 after the bounded wait, not a stale 200.
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE appointments SET version = version + 1 WHERE id = $1::uuid").bind(&id).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let unreachable = app.client.get(app.url(&schedule)).header("x-wait-for", format!("{id}:4")).send().await.unwrap();
    assert_eq!(problem(unreachable, 503).await["status"], 503);
    problem(app.client.get(app.url(&schedule)).header("x-wait-for", "nonsense").send().await.unwrap(), 400).await;
    for bad in [
        "/appointments/schedule",
        "/appointments/schedule?clinicianId=x",
        &format!("{schedule}&view=month"),
        &format!("{schedule}&size=0"),
        "/appointments/upcoming",
    ] {
        problem(app.client.get(app.url(bad)).send().await.unwrap(), 400).await;
    }
    // Dates a calendar query cannot mean (chrono reads any number of year digits, signed).
    let any_day = format!("/appointments/schedule?clinicianId={}", Uuid::new_v4());
    for date in ["%2B262142-12-31", "-5000-01-01", "0000-01-01", "10000-01-01"] {
        let resp = app.client.get(app.url(&format!("{any_day}&date={date}&view=week"))).send().await.unwrap();
        assert_eq!(problem(resp, 400).await["errors"]["date"], "must be a date like 2027-03-01", "{date}");
    }
}

#[tokio::test]
async fn every_change_is_one_record_on_the_appointment_topic_keyed_and_in_order() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let booked = app.book(patient, Uuid::new_v4(), soon(), 30).await;
    let id = booked.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.command(&id, "check-in", None, None).await.status(), 200);
    assert_eq!(app.command(&id, "complete", None, None).await.status(), 200);

    let seen: Vec<(u64, String, String)> = app
        .appointment_events(3)
        .await
        .into_iter()
        .map(|(key, e)| {
            assert_eq!(key, id);
            assert_eq!(e.patient_id, patient.to_string());
            (e.sequence, e.event_type, e.status)
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "APPOINTMENT_BOOKED".into(), "BOOKED".into()),
            (2, "APPOINTMENT_CHECKED_IN".into(), "CHECKED_IN".into()),
            (3, "APPOINTMENT_COMPLETED".into(), "COMPLETED".into())
        ]
    );
    // Published rows keep no payload.
    let unscrubbed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE payload IS NOT NULL AND sent_at IS NOT NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(unscrubbed, 0);
}

#[tokio::test]
async fn a_schedule_day_is_the_day_of_the_time_zone_asked_for() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let clinician = Uuid::new_v4();
    // Tomorrow 14:00 UTC is 23:00 in Tokyo (UTC+9, no clock changes); 16:00 UTC is 01:00 there,
    // the day after.
    let (late, next) = (tomorrow_at(14), tomorrow_at(16));
    let mut tokens = Vec::new();
    for starts in [late, next] {
        let resp = app.book(patient, clinician, starts, 30).await;
        assert_eq!(resp.status(), 201);
        tokens.push(resp.headers()["x-consistency-token"].to_str().unwrap().to_owned());
    }
    let day = late.date_naive();
    let schedule = format!("/appointments/schedule?clinicianId={clinician}&date={day}");
    // A token stands for its own appointment only: wait until the view shows both bookings.
    for token in &tokens {
        query(&app, &schedule, Some(token)).await;
    }
    let starts = |entries: Vec<Value>| entries.iter().map(|e| e["startsAt"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let (utc, _) = query(&app, &schedule, None).await;
    assert_eq!(starts(utc), [rfc3339(late), rfc3339(next)], "the UTC day (the default)");
    let (tokyo, _) = query(&app, &format!("{schedule}&timeZone=Asia/Tokyo"), None).await;
    assert_eq!(starts(tokyo), [rfc3339(late)], "that day in Tokyo ends at 15:00 UTC");
    let (tokyo_next, _) = query(
        &app,
        &format!("/appointments/schedule?clinicianId={clinician}&date={}&timeZone=Asia/Tokyo", day.succ_opt().unwrap()),
        None,
    )
    .await;
    assert_eq!(starts(tokyo_next), [rfc3339(next)]);
    for bad in ["Tokyo", "UTC%2B9", "%2B09:00", ""] {
        let resp = app.client.get(app.url(&format!("{schedule}&timeZone={bad}"))).send().await.unwrap();
        assert_eq!(
            problem(resp, 400).await["errors"]["timeZone"],
            "must be an IANA time zone name like Europe/Berlin or UTC",
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_schedule_is_paged_by_start_with_its_total() {
    let app = TestApp::spawn().await;
    let patient = app.known_patient().await;
    let clinician = Uuid::new_v4();
    let mut tokens = Vec::new();
    for hour in [11, 9, 10] {
        let resp = app.book(patient, clinician, tomorrow_at(hour), 30).await;
        tokens.push(resp.headers()["x-consistency-token"].to_str().unwrap().to_owned());
    }
    let day = tomorrow_at(0).date_naive();
    let path = |page: usize| format!("/appointments/schedule?clinicianId={clinician}&date={day}&size=2&page={page}");
    for token in &tokens {
        query(&app, &path(0), Some(token)).await;
    }
    let (first, headers) = query(&app, &path(0), None).await;
    assert_eq!(headers["x-total-count"], "3");
    let (second, _) = query(&app, &path(1), None).await;
    let starts: Vec<&str> = first.iter().chain(&second).map(|e| e["startsAt"].as_str().unwrap()).collect();
    assert_eq!(first.len(), 2);
    assert_eq!(second.len(), 1);
    assert_eq!(starts, [rfc3339(tomorrow_at(9)), rfc3339(tomorrow_at(10)), rfc3339(tomorrow_at(11))]);
    let (beyond, _) = query(&app, &path(5), None).await;
    assert!(beyond.is_empty());
}
