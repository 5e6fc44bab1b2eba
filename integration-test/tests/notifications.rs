//! notification-service against a real mail server (Mailpit) and real Kafka: exactly one mail per
//! event when the service is killed mid-stream and its events are delivered again; nothing lost
//! nor sent twice while the mail server is down; reminders moved by a reschedule, dropped by a
//! cancellation, kept across a restart, held back while the consumer or the producers catch up
//! on a backlog, and dropped once held up past the start.

mod support;

use std::{collections::HashMap, time::Duration};

use dev_stack::{kafka::Kafka, mailpit::Mailpit, plain_smtp::PlainSmtp};
use prost::Message as _;
use proto::{appointments::AppointmentEvent, events::PatientEvent};
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    ClientConfig,
};
use support::*;
use uuid::Uuid;

/// `n` PATIENT_CREATED events of new patients, each with its own address.
fn created(n: usize) -> Vec<PatientEvent> {
    (0..n)
        .map(|i| {
            let id = Uuid::new_v4();
            PatientEvent {
                patient_id: id.to_string(),
                name: format!("Mail Patient {i}"),
                email: format!("mail-{}@example.org", id.simple()),
                event_type: "PATIENT_CREATED".into(),
                event_id: Uuid::new_v4().to_string(),
                sequence: 1,
                ..Default::default()
            }
        })
        .collect()
}

async fn publish(bootstrap: &str, topic: &str, events: &[PatientEvent]) {
    publish_written(bootstrap, topic, events, chrono::Utc::now()).await;
}

/// The same, each record stamped `written` (a producer's clock, as the broker keeps it).
async fn publish_written(bootstrap: &str, topic: &str, events: &[PatientEvent], written: chrono::DateTime<chrono::Utc>) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    for e in events {
        let payload = e.encode_to_vec();
        let record = FutureRecord::to(topic).key(&e.patient_id).payload(&payload).timestamp(written.timestamp_millis());
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
}

/// Mails per recipient among `events`' patients, once the server holds at least `at_least`.
async fn delivered(mailpit: &Mailpit, events: &[PatientEvent], at_least: usize) -> HashMap<String, usize> {
    eventually(Duration::from_secs(60), "the mails arrive", || async {
        let all = mails(mailpit, None).await;
        let ours: Vec<&Mail> = all.iter().filter(|m| events.iter().any(|e| e.email == m.to)).collect();
        (ours.len() >= at_least).then(|| {
            let mut per: HashMap<String, usize> = HashMap::new();
            for m in ours {
                *per.entry(m.to.clone()).or_default() += 1;
            }
            per
        })
    })
    .await
}

/// `patient` got exactly `n` mails (`which`), none of them a reminder.
async fn mailed_without_a_reminder(mailpit: &Mailpit, patient: &PatientEvent, n: usize, which: &str) {
    let got = delivered(mailpit, std::slice::from_ref(patient), n).await;
    assert_eq!(got[&patient.email], n, "{which}");
    let subjects: Vec<String> = mails(mailpit, Some(&patient.email)).await.into_iter().map(|m| m.subject).collect();
    assert!(!subjects.iter().any(|s| s.contains("Reminder")), "{subjects:?}");
}

/// Short leases, so a mail claimed by a killed instance is soon due again.
fn quick(settings: &mut notification_service::config::Settings) {
    settings.sender.sender_lease_ms = 2_000;
}

#[tokio::test]
async fn killed_mid_stream_and_fed_the_same_events_again_it_mails_each_patient_once() {
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let args = kafka_args(&bootstrap, &topic);
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let events = created(40);

    let first = spawn_notifications(None, args.clone(), &appointments, mailpit.smtp_port(), quick).await;
    // A first part is mailed and recorded as sent.
    publish(&bootstrap, &topic, &events[..10]).await;
    delivered(&mailpit, &events[..10], 10).await;
    eventually(Duration::from_secs(30), "the first mails are recorded as sent", || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM mails WHERE status = 'SENT'").fetch_one(&first.db).await.unwrap();
        (sent == 10).then_some(())
    })
    .await;
    // The mail server goes away while nothing is in flight (SMTP cannot tell whether a mail cut
    // off mid-conversation was stored: see notification-service's sender), the rest of the events
    // stream in, and the service is killed outright mid-stream: some recorded, some not yet read.
    mailpit.stop();
    publish(&bootstrap, &topic, &events[10..]).await;
    eventually(Duration::from_secs(30), "more mails are recorded", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mails").fetch_one(&first.db).await.unwrap();
        (n > 12).then_some(())
    })
    .await;
    let db_url = first.db_url.clone();
    first.kill().await;

    // The same events again (a producer's re-send, a rebalance's redelivery), then a new instance
    // on the same database and consumer group, and the mail server back.
    publish(&bootstrap, &topic, &events).await;
    mailpit.restart().unwrap();
    let second = spawn_notifications(Some(db_url), args, &appointments, mailpit.smtp_port(), quick).await;
    let per = delivered(&mailpit, &events, events.len()).await;
    eventually(Duration::from_secs(30), "every mail is recorded as sent", || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM mails WHERE status = 'SENT'").fetch_one(&second.db).await.unwrap();
        (sent == events.len() as i64).then_some(())
    })
    .await;
    // Anything that would arrive twice has had time to (a lease is 2 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let per_after = delivered(&mailpit, &events, events.len()).await;
    assert_eq!(per, per_after);
    assert_eq!(per.len(), events.len(), "every patient got mail");
    assert!(per.values().all(|n| *n == 1), "one welcome each: {per:?}");
    let all = mails(&mailpit, None).await;
    assert!(all.iter().filter(|m| per.contains_key(&m.to)).all(|m| m.subject.contains("Welcome")));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM mails").fetch_one(&second.db).await.unwrap();
    assert_eq!(rows, events.len() as i64, "one mail recorded per patient, re-sent events added none");
    second.stop().await;
}

/// An appointment event of `patient`.
/// Produces one appointment event to `topic`, keyed by its appointment.
async fn produce(bootstrap: &str, topic: &str, event: &AppointmentEvent) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let payload = event.encode_to_vec();
    let record = FutureRecord::to(topic).key(&event.appointment_id).payload(&payload);
    producer.send(record, Duration::from_secs(10)).await.unwrap();
}

fn appointment_event(
    patient: &PatientEvent,
    appointment: Uuid,
    sequence: u64,
    kind: &str,
    starts: chrono::DateTime<chrono::Utc>,
) -> AppointmentEvent {
    let status = match kind {
        "APPOINTMENT_CANCELLED" => "CANCELLED",
        _ => "BOOKED",
    };
    let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    AppointmentEvent {
        event_id: Uuid::new_v4().to_string(),
        appointment_id: appointment.to_string(),
        sequence,
        event_type: kind.into(),
        patient_id: patient.patient_id.clone(),
        clinician_id: Uuid::new_v4().to_string(),
        starts_at: at(starts),
        ends_at: at(starts + chrono::Duration::minutes(30)),
        status: status.into(),
        occurred_at: at(chrono::Utc::now()),
        cancel_reason: if status == "CANCELLED" { "REQUESTED".into() } else { String::new() },
        previous_starts_at: String::new(),
    }
}

#[tokio::test]
async fn reminders_follow_reschedules_and_cancellations_and_survive_a_restart() {
    use chrono::{Duration as Span, Utc};
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let args = kafka_args(&bootstrap, &topic);
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let reminders = |s: &mut notification_service::config::Settings| {
        quick(s);
        s.reminder_before_secs = 10;
        // The clinic's clock: Tokyo, UTC+9 all year.
        s.mail_time_zone = "Asia/Tokyo".parse().unwrap();
    };
    let first = spawn_notifications(None, args.clone(), &appointments, mailpit.smtp_port(), reminders).await;
    let patient = created(1).remove(0);
    publish(&bootstrap, &topic, std::slice::from_ref(&patient)).await;

    // X: booked an hour ahead (its reminder far off), then moved to 20 s ahead (its reminder due
    // in 10 s, after the restart below). Y: booked 14 s ahead, then cancelled (no reminder).
    let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
    let now = Utc::now();
    let moved_to = now + Span::seconds(20);
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    for e in [
        appointment_event(&patient, x, 1, "APPOINTMENT_BOOKED", now + Span::hours(1)),
        appointment_event(&patient, x, 2, "APPOINTMENT_RESCHEDULED", moved_to),
        appointment_event(&patient, y, 1, "APPOINTMENT_BOOKED", now + Span::seconds(14)),
        appointment_event(&patient, y, 2, "APPOINTMENT_CANCELLED", now + Span::seconds(14)),
    ] {
        let payload = e.encode_to_vec();
        producer
            .send(FutureRecord::to(&appointments).key(&e.appointment_id).payload(&payload), Duration::from_secs(10))
            .await
            .unwrap();
    }
    // Everything recorded (reminders still pending), then a restart: the schedule is durable.
    eventually(Duration::from_secs(30), "the mails and the reminder are recorded", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mails").fetch_one(&first.db).await.unwrap();
        (n == 8).then_some(()) // welcome, 4 confirmations, reminders X v1 (cancelled), X v2, Y v1 (cancelled)
    })
    .await;
    let db_url = first.db_url.clone();
    first.stop().await;
    let second = spawn_notifications(Some(db_url), args, &appointments, mailpit.smtp_port(), reminders).await;

    let got = eventually(Duration::from_secs(60), "the reminder arrives", || async {
        let got = mails(&mailpit, Some(&patient.email)).await;
        got.iter().any(|m| m.subject.contains("Reminder")).then_some(got)
    })
    .await;
    // Past when Y would have been reminded, and X started: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let all = mails(&mailpit, Some(&patient.email)).await;
    assert_eq!(all.len(), got.len(), "{all:?}");
    let count = |needle: &str| all.iter().filter(|m| m.subject.contains(needle)).count();
    assert_eq!(
        (count("Welcome"), count("is booked"), count("has moved"), count("is cancelled"), count("Reminder")),
        (1, 2, 1, 1, 1),
        "{all:?}"
    );
    let reminder = all.iter().find(|m| m.subject.contains("Reminder")).unwrap();
    let in_tokyo = (moved_to + Span::hours(9)).format("%Y-%m-%d %H:%M").to_string();
    assert!(reminder.subject.contains(&in_tokyo), "the new time, on the clinic's clock: {}", reminder.subject);
    let cancelled: i64 = sqlx::query_scalar("SELECT count(*) FROM mails WHERE kind = 'REMINDER' AND status = 'CANCELLED'")
        .fetch_one(&second.db)
        .await
        .unwrap();
    assert_eq!(cancelled, 2, "X's first reminder and Y's");
    second.stop().await;
}

#[tokio::test]
async fn a_reminder_found_due_while_catching_up_waits_for_the_rest_of_the_backlog() {
    use chrono::{Duration as Span, Utc};
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), |s| {
        quick(s);
        s.reminder_before_secs = 3_600;
    })
    .await;
    let patient = created(1).remove(0);
    publish(&bootstrap, &topic, std::slice::from_ref(&patient)).await;

    // Booked ten minutes ago for half an hour from now (its reminder due already), and cancelled
    // since: the events come late, as after an outage, the cancellation after the booking.
    let appointment = Uuid::new_v4();
    let starts = Utc::now() + Span::minutes(30);
    let late = |mut e: AppointmentEvent, ago: i64| {
        e.occurred_at = (Utc::now() - Span::minutes(ago)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        e
    };
    let booked = late(appointment_event(&patient, appointment, 1, "APPOINTMENT_BOOKED", starts), 10);
    produce(&bootstrap, &appointments, &booked).await;
    let due: chrono::DateTime<Utc> = eventually(Duration::from_secs(30), "the reminder is scheduled", || async {
        sqlx::query_scalar("SELECT next_attempt_at FROM mails WHERE kind = 'REMINDER'").fetch_optional(&service.db).await.unwrap()
    })
    .await;
    assert!(due > Utc::now() + Span::seconds(30), "not sent at once: due {due}");
    let cancelled = late(appointment_event(&patient, appointment, 2, "APPOINTMENT_CANCELLED", starts), 5);
    produce(&bootstrap, &appointments, &cancelled).await;
    eventually(Duration::from_secs(30), "the reminder is cancelled", || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM mails WHERE kind = 'REMINDER'").fetch_one(&service.db).await.unwrap();
        (status == "CANCELLED").then_some(())
    })
    .await;
    mailed_without_a_reminder(&mailpit, &patient, 3, "welcome, booked, cancelled").await;
    service.stop().await;
}

#[tokio::test]
async fn a_reminder_waits_until_the_consumer_has_read_what_was_written_after_its_booking() {
    use chrono::{Duration as Span, Utc};
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let args = kafka_args(&bootstrap, &topic);
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let reminders = |s: &mut notification_service::config::Settings| {
        quick(s);
        s.reminder_before_secs = 3_600;
    };
    // The patient is known (welcomed) before; the service is stopped meanwhile.
    let first = spawn_notifications(None, args.clone(), &appointments, mailpit.smtp_port(), reminders).await;
    let patient = created(1).remove(0);
    publish(&bootstrap, &topic, std::slice::from_ref(&patient)).await;
    delivered(&mailpit, std::slice::from_ref(&patient), 1).await;
    let (db_url, db) = (first.db_url.clone(), first.db.clone());
    first.stop().await;

    // Written while it is stopped, on one partition, in this order (all of them
    // new: no producer is catching up): A booked for half an hour ahead, its reminder due at
    // once; B booked, on which the consumer will be stuck a while (this test holds the row B's
    // confirmation needs); A cancelled.
    let a = Uuid::new_v4();
    let starts = Utc::now() + Span::minutes(30);
    let booked_a = appointment_event(&patient, a, 1, "APPOINTMENT_BOOKED", starts);
    let booked_b = appointment_event(&patient, Uuid::new_v4(), 1, "APPOINTMENT_BOOKED", starts + Span::hours(3));
    let cancelled_a = appointment_event(&patient, a, 2, "APPOINTMENT_CANCELLED", starts);
    let mut stuck = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO mails (id, dedup_key, kind, patient_id, next_attempt_at, status)
         VALUES ($1, $2, 'BOOKED', $3, now(), 'CANCELLED')",
    )
    .bind(Uuid::new_v4())
    .bind(format!("event:{}", booked_b.event_id))
    .bind(Uuid::parse_str(&patient.patient_id).unwrap())
    .execute(&mut *stuck)
    .await
    .unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    for e in [&booked_a, &booked_b, &cancelled_a] {
        let payload = e.encode_to_vec();
        let record = FutureRecord::to(&appointments).partition(0).key(&e.appointment_id).payload(&payload);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    let service = spawn_notifications(Some(db_url), args, &appointments, mailpit.smtp_port(), reminders).await;

    // A's booking is read and confirmed; its reminder is recorded, held until offset 2 is read.
    delivered(&mailpit, std::slice::from_ref(&patient), 2).await;
    let held: Option<i64> =
        sqlx::query_scalar("SELECT held_through FROM mails WHERE kind = 'REMINDER'").fetch_one(&service.db).await.unwrap();
    assert_eq!(held, Some(2));
    // Six of the sender's rounds while the consumer is stuck on B: the reminder stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let subjects: Vec<String> = mails(&mailpit, Some(&patient.email)).await.into_iter().map(|m| m.subject).collect();
    assert!(!subjects.iter().any(|s| s.contains("Reminder")), "sent while the cancellation was unread: {subjects:?}");

    // B goes through, then A's cancellation: the reminder is cancelled, never sent.
    stuck.rollback().await.unwrap();
    eventually(Duration::from_secs(30), "the reminder is cancelled", || async {
        let status: String = sqlx::query_scalar("SELECT status FROM mails WHERE kind = 'REMINDER' AND appointment_id = $1")
            .bind(a)
            .fetch_one(&service.db)
            .await
            .unwrap();
        (status == "CANCELLED").then_some(())
    })
    .await;
    mailed_without_a_reminder(&mailpit, &patient, 4, "welcome, A and B booked, A cancelled").await;
    service.stop().await;
}

#[tokio::test]
async fn a_reminder_held_up_past_the_start_of_its_appointment_is_dropped() {
    use chrono::{Duration as Span, Utc};
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), |s| {
        quick(s);
        s.reminder_before_secs = 3_600;
        s.sender.sender_retry_max_ms = 2_000;
    })
    .await;
    mailpit.stop();
    let patient = created(1).remove(0);
    publish(&bootstrap, &topic, std::slice::from_ref(&patient)).await;
    // Booked now for a little later (room for the event to arrive first): its reminder is due
    // at once, and the server is down.
    let starts = Utc::now() + Span::seconds(15);
    produce(&bootstrap, &appointments, &appointment_event(&patient, Uuid::new_v4(), 1, "APPOINTMENT_BOOKED", starts)).await;
    eventually(Duration::from_secs(30), "the reminder was tried", || async {
        let tried: Option<i32> =
            sqlx::query_scalar("SELECT attempts FROM mails WHERE kind = 'REMINDER'").fetch_optional(&service.db).await.unwrap();
        tried.filter(|n| *n >= 1)
    })
    .await;
    tokio::time::sleep((starts - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1)).await;

    // The server is back after the start: the welcome and the confirmation go, the reminder not.
    mailpit.restart().unwrap();
    let status: String = eventually(Duration::from_secs(90), "the reminder is settled", || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM mails WHERE kind = 'REMINDER'").fetch_one(&service.db).await.unwrap();
        (status != "PENDING" && status != "SENDING").then_some(status)
    })
    .await;
    assert_eq!(status, "CANCELLED");
    mailed_without_a_reminder(&mailpit, &patient, 2, "welcome and booked").await;
    service.stop().await;
}

#[tokio::test]
async fn while_the_mail_server_is_down_mails_wait_and_then_arrive_once() {
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), |_| {}).await;

    mailpit.stop();
    let events = created(5);
    publish(&bootstrap, &topic, &events).await;
    // Recorded, tried, refused by the closed port, waiting: nothing lost, nothing sent.
    eventually(Duration::from_secs(60), "every mail was tried at least twice", || async {
        let tried: i64 =
            sqlx::query_scalar("SELECT count(*) FROM mails WHERE attempts >= 2 AND status IN ('PENDING', 'SENDING')")
                .fetch_one(&service.db)
                .await
                .unwrap();
        (tried == events.len() as i64).then_some(())
    })
    .await;
    let reasons: Vec<String> = sqlx::query_scalar("SELECT DISTINCT last_error FROM mails").fetch_all(&service.db).await.unwrap();
    assert_eq!(reasons, ["the mail server is unavailable"]);

    mailpit.restart().unwrap();
    let per = delivered(&mailpit, &events, events.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(delivered(&mailpit, &events, events.len()).await, per);
    assert!(per.len() == events.len() && per.values().all(|n| *n == 1), "{per:?}");
    service.stop().await;
}

#[tokio::test]
async fn a_replay_of_history_from_before_the_first_start_greets_nobody_but_a_late_event_is_mailed() {
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), quick).await;
    // Registered two days ago (a new consumer group reading the topic from its beginning), then a
    // patient registered now.
    let mut events = created(2);
    events[0].occurred_at = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    events[1].occurred_at = chrono::Utc::now().to_rfc3339();
    publish(&bootstrap, &topic, &events).await;
    let per = delivered(&mailpit, &events, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(delivered(&mailpit, &events, 1).await, per);
    assert_eq!(per.keys().collect::<Vec<_>>(), [&events[1].email], "only the new patient is greeted");
    // The old one is still known, for the mails their future appointments will need.
    let known: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts").fetch_one(&service.db).await.unwrap();
    assert_eq!(known, 2);

    // A service mailing for a week already, down for two days: what happened meanwhile is
    // consumed late, and still mailed.
    sqlx::query("UPDATE mailing_since SET since = now() - interval '7 days'").execute(&service.db).await.unwrap();
    let db_url = service.db_url.clone();
    service.stop().await;
    let service =
        spawn_notifications(Some(db_url), kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), quick).await;
    let mut late = created(1);
    late[0].occurred_at = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    publish(&bootstrap, &topic, &late).await;
    assert_eq!(delivered(&mailpit, &late, 1).await.len(), 1, "the late event is mailed");
    service.stop().await;
}

#[tokio::test]
async fn a_replayed_event_that_does_not_say_when_it_happened_is_dated_by_its_record() {
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    // A producer that sets fields 1-4 only (no occurredAt): one patient written to the topic two
    // days before the service's first start, one written now.
    let old = created(1);
    let new = created(1);
    publish_written(&bootstrap, &topic, &old, chrono::Utc::now() - chrono::Duration::days(2)).await;
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), quick).await;
    publish(&bootstrap, &topic, &new).await;

    // Both consumed (and known, for their appointments' mails).
    eventually(Duration::from_secs(60), "both patients are known", || async {
        let known: i64 = sqlx::query_scalar("SELECT count(*) FROM contacts").fetch_one(&service.db).await.unwrap();
        (known == 2).then_some(())
    })
    .await;
    // A welcome is recorded in the transaction that stores its contact.
    let greeted: Vec<Uuid> = sqlx::query_scalar("SELECT patient_id FROM mails").fetch_all(&service.db).await.unwrap();
    assert_eq!(greeted, [Uuid::parse_str(&new[0].patient_id).unwrap()], "only the patient written now is greeted");
    assert_eq!(delivered(&mailpit, &new, 1).await[&new[0].email], 1);
    assert!(mails(&mailpit, Some(&old[0].email)).await.is_empty());
    service.stop().await;
}

/// Makes the mail server refuse: `sender` on MAIL FROM, `recipient` on RCPT TO (a reply code,
/// every time), or neither.
async fn refuse(mailpit: &Mailpit, sender: Option<u16>, recipient: Option<u16>) {
    let trigger = |code: Option<u16>| serde_json::json!({ "ErrorCode": code.unwrap_or(451), "Probability": if code.is_some() { 100 } else { 0 } });
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/chaos", mailpit.http_url()))
        .json(&serde_json::json!({ "Sender": trigger(sender), "Recipient": trigger(recipient) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
}

#[tokio::test]
async fn a_server_refusing_this_service_keeps_the_mails_and_one_refusing_the_recipient_fails_its_mail() {
    let mailpit = Mailpit::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, mailpit.smtp_port(), quick).await;

    // "530 authentication required" (the credentials rotated, say): the operator's to fix.
    refuse(&mailpit, Some(530), None).await;
    let waiting = created(2);
    publish(&bootstrap, &topic, &waiting).await;
    eventually(Duration::from_secs(60), "both mails were refused twice and wait", || async {
        let rows: Vec<(String, i32, Option<String>)> =
            sqlx::query_as("SELECT status, attempts, last_error FROM mails").fetch_all(&service.db).await.unwrap();
        let waiting = |(status, attempts, error): &(String, i32, Option<String>)| {
            status != "FAILED" && *attempts >= 2 && error.as_deref() == Some("the mail server refuses this service")
        };
        (rows.len() == 2 && rows.iter().all(waiting)).then_some(())
    })
    .await;
    assert!(mails(&mailpit, None).await.is_empty());

    // Fixed: both go, once each.
    refuse(&mailpit, None, None).await;
    let per = delivered(&mailpit, &waiting, 2).await;
    assert!(per.values().all(|n| *n == 1), "{per:?}");

    // "550 mailbox unavailable": that mail is refused for good, and only that one.
    refuse(&mailpit, None, Some(550)).await;
    let refused = created(1);
    publish(&bootstrap, &topic, &refused).await;
    let status: String = eventually(Duration::from_secs(60), "the refused mail is settled", || async {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM mails WHERE patient_id = $1")
            .bind(Uuid::parse_str(&refused[0].patient_id).unwrap())
            .fetch_optional(&service.db)
            .await
            .unwrap();
        status.filter(|s| s != "PENDING" && s != "SENDING")
    })
    .await;
    assert_eq!(status, "FAILED");
    assert!(mails(&mailpit, Some(&refused[0].email)).await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn a_server_without_smtputf8_gets_an_internationalised_domain_as_its_a_label_and_a_non_ascii_mailbox_fails() {
    let server = PlainSmtp::start_ephemeral().unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, server.smtp_port(), quick).await;

    let mut patients = created(2);
    let (idn, local) = (Uuid::new_v4().simple().to_string(), Uuid::new_v4().simple().to_string());
    patients[0].email = format!("ann-{idn}@bücher.example");
    patients[1].email = format!("jösé-{local}@example.org");
    publish(&bootstrap, &topic, &patients).await;

    let status_of = |patient: &PatientEvent| {
        let (db, id) = (service.db.clone(), Uuid::parse_str(&patient.patient_id).unwrap());
        async move {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, last_error FROM mails WHERE patient_id = $1")
                    .bind(id)
                    .fetch_optional(&db)
                    .await
                    .unwrap();
            row.filter(|(status, _)| status != "PENDING" && status != "SENDING")
        }
    };
    let (status, _) =
        eventually(Duration::from_secs(60), "the mail to the internationalised domain is settled", || status_of(&patients[0]))
            .await;
    assert_eq!(status, "SENT");
    let arrived: Vec<String> = server.mails().into_iter().filter(|m| m.contains(&idn)).collect();
    assert_eq!(arrived.len(), 1, "one mail for the patient");
    assert!(arrived[0].contains(&format!("ann-{idn}@xn--bcher-kva.example")), "{}", arrived[0]);

    // Before: lettre refused to send it, and it was retried as if the server were down, forever.
    let (status, error) =
        eventually(Duration::from_secs(60), "the mail to the non-ASCII mailbox is settled", || status_of(&patients[1])).await;
    assert_eq!(status, "FAILED");
    assert_eq!(error.as_deref(), Some("the mail server cannot take a non-ASCII address (it lacks SMTPUTF8)"));
    assert!(!server.mails().iter().any(|m| m.contains(&local)), "nothing reached the server");
    service.stop().await;
}

#[tokio::test]
async fn a_send_cut_off_by_its_time_limit_leaves_no_reply_behind_for_the_next_mail() {
    // The service waits 1 s for a send (half its 2 s lease); the server answers the first mail
    // after 1.5 s and refuses the next one.
    let server = PlainSmtp::start_first_slow_then_refusing(Duration::from_millis(1_500)).unwrap();
    let bootstrap = Kafka::shared_for_tests().bootstrap_servers();
    let topic = unique_topic();
    let appointments = format!("appointment-{}", Uuid::new_v4().simple());
    let service = spawn_notifications(None, kafka_args(&bootstrap, &topic), &appointments, server.smtp_port(), quick).await;

    let patients = created(2);
    publish(&bootstrap, &topic, &patients).await;
    let stored = eventually(Duration::from_secs(60), "the first mail reaches the server", || async {
        let stored = server.mails();
        (!stored.is_empty()).then_some(stored)
    })
    .await;
    let refused = patients.iter().find(|p| !stored.iter().any(|m| m.contains(&p.email))).expect("one mail was not stored");
    let id = Uuid::parse_str(&refused.patient_id).unwrap();
    let status = eventually(Duration::from_secs(60), "the refused mail is settled", || async {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM mails WHERE patient_id = $1")
            .bind(id)
            .fetch_optional(&service.db)
            .await
            .unwrap();
        status.filter(|s| s != "PENDING" && s != "SENDING")
    })
    .await;
    // Before, the cut-off connection went back to a pool: the next mail read the late reply to
    // the first as its own, was recorded SENT, and the server's refusal of it was never seen.
    assert_eq!(status, "FAILED");
    assert_eq!(server.mails().len(), 1, "the server stored nothing else");
    service.stop().await;
}
