//! Patient events end to end on a real Kafka broker: the outbox relay's records, analytics'
//! effectively-once aggregates, the dead-letter topic, billing's consumer.

mod support;

use std::time::Duration;

use common::kafka::KafkaArgs;
use dev_stack::kafka::Kafka;
use prost::Message as _;
use rdkafka::Message;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn broker() -> String {
    Kafka::shared_for_tests().bootstrap_servers()
}

#[tokio::test]
async fn rest_changes_are_published_in_order_with_key_and_fields() {
    let topic = unique_topic();
    let (_billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    let patients = spawn_patients(&grpc, kafka_args(&broker(), &topic)).await;
    let client = client().await;

    let id = create_patient(patients.port, &patient_body(1)).await;
    let mut changed = patient_body(1);
    changed["address"] = json!("2 Other Street");
    let url = format!("http://127.0.0.1:{}/patients/{id}", patients.port);
    assert_eq!(client.put(&url).json(&changed).send().await.unwrap().status(), 200);
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 204);

    let records = read_records(&broker(), &topic, 3, WAIT).await;
    let kinds: Vec<String> = records.iter().map(|r| decode(r).event_type).collect();
    assert_eq!(kinds, ["PATIENT_CREATED", "PATIENT_UPDATED", "PATIENT_DELETED"]);
    for r in &records {
        assert_eq!(key(r), id, "record key is the patient id");
        let event = decode(r);
        assert_eq!(event.patient_id, id);
        assert_eq!(common::kafka::header(r, "event-id"), Some(event.event_id.as_str()));
    }
    let created = decode(&records[0]);
    assert_eq!((created.name.as_str(), created.email.as_str()), ("Journey Patient 1", "journey1@example.org"));
    assert_eq!((created.date_of_birth.as_str(), created.registered_date.as_str()), ("1980-02-03", "2024-03-04"));
    let unsent = eventually(WAIT, "outbox rows marked sent", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&patients.db).await.unwrap();
        (n == 0).then_some(n)
    })
    .await;
    assert_eq!(unsent, 0);
    // Published rows keep no personal data: their payload is gone once the broker acknowledged.
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE payload IS NOT NULL").fetch_one(&patients.db).await.unwrap();
    assert_eq!(kept, 0, "published outbox rows still carry their payload");
}

#[tokio::test]
async fn analytics_counts_each_event_once_across_a_kill_a_restart_and_redeliveries() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1; // one partition: a later record is consumed after all earlier ones
    let (_billing, grpc) = spawn_billing(KafkaArgs::disabled()).await;
    let patients = spawn_patients(&grpc, args.clone()).await;
    let analytics = spawn_analytics(None, args.clone()).await;

    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(create_patient(patients.port, &patient_body(n)).await);
    }
    let url = format!("http://127.0.0.1:{}/patients/{}", patients.port, ids[0]);
    assert_eq!(client().await.delete(url).send().await.unwrap().status(), 204);
    eventually(WAIT, "six events counted", || async {
        let s = summary(&analytics).await;
        (s["patientsDeleted"] == 1 && s["patientsCreated"] == 5).then_some(())
    })
    .await;

    // Killed mid-stream: no graceful commit. Then every record is delivered once more.
    let db_url = analytics.db_url.clone();
    analytics.kill().await;
    for record in read_records(&broker(), &topic, 6, WAIT).await {
        produce_raw(&broker(), &topic, &key(&record), record.payload().unwrap()).await;
    }
    let restarted = spawn_analytics(Some(db_url), args).await;
    create_patient(patients.port, &patient_body(99)).await; // the sentinel, after the duplicates

    let s = eventually(WAIT, "the sentinel counted", || async {
        let s = summary(&restarted).await;
        (s["patientsCreated"] == 6).then_some(s)
    })
    .await;
    assert_eq!(s["patientsCreated"], 6, "5 + the sentinel, duplicates ignored: {s}");
    assert_eq!(s["patientsDeleted"], 1);
    assert_eq!(s["activePatients"], 5);
    assert_eq!(s["registrationsPerMonth"], json!({"2024-03": 6}));
    assert_eq!(s["ageBands"]["35-49"].as_i64().unwrap() + s["ageBands"]["50-64"].as_i64().unwrap(), 5);
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events").fetch_one(&restarted.db).await.unwrap();
    assert_eq!(processed, 7);
    let metrics = metrics_text(restarted.port).await;
    assert!(metrics.contains("analytics_events_total{result=\"applied\"} 1\n"), "only the sentinel is new: {metrics}");
    assert!(metrics.contains("analytics_events_total{result=\"duplicate\"}"), "{metrics}");
    restarted.stop().await;
}

#[tokio::test]
async fn an_undecodable_record_goes_to_the_dead_letter_topic_and_the_next_event_counts() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    let analytics = spawn_analytics(None, args.clone()).await;

    produce_raw(&broker(), &topic, "garbage-key", b"\x08\x96\x01 definitely not a PatientEvent \xff").await;
    let valid = proto::events::PatientEvent {
        patient_id: uuid::Uuid::new_v4().to_string(),
        event_type: "PATIENT_CREATED".into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        date_of_birth: "2010-01-01".into(),
        registered_date: "2025-12-31".into(),
        ..Default::default()
    };
    produce_raw(&broker(), &topic, &valid.patient_id, &valid.encode_to_vec()).await;

    let dead = read_records(&broker(), &args.dead_letter_topic(), 1, WAIT).await;
    assert_eq!(key(&dead[0]), "garbage-key");
    assert!(common::kafka::header(&dead[0], "dlt-reason").is_some_and(|r| !r.is_empty()));
    assert_eq!(common::kafka::header(&dead[0], "dlt-original-topic"), Some(topic.as_str()));
    let s = eventually(WAIT, "the valid event counted", || async {
        let s = summary(&analytics).await;
        (s["patientsCreated"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["ageBands"]["0-17"], 1);
    assert_eq!(s["registrationsPerMonth"], json!({"2025-12": 1}));
    let metrics = metrics_text(analytics.port).await;
    assert!(metrics.contains("analytics_events_total{result=\"dead_lettered\"} 1"), "{metrics}");
}

/// A `PatientEvent` as the reference producer writes it: fields 1-4 only.
fn reference_event(kind: &str) -> Vec<u8> {
    proto::events::PatientEvent {
        patient_id: uuid::Uuid::new_v4().to_string(),
        name: "Reference Patient".into(),
        email: "reference@example.org".into(),
        event_type: kind.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn events_with_only_fields_1_to_4_count_once_also_when_redelivered() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    let first = spawn_analytics(None, args.clone()).await;
    for _ in 0..2 {
        produce_unkeyed(&broker(), &topic, &reference_event("PATIENT_CREATED")).await;
    }
    eventually(WAIT, "both reference events counted", || async { (summary(&first).await["patientsCreated"] == 2).then_some(()) })
        .await;
    let db_url = first.db_url.clone();
    first.stop().await;

    // A consumer group that never committed anything: every record is delivered again.
    let again = spawn_analytics_with(Some(db_url), args, |s| s.group_id = "analytics-replay".into()).await;
    produce_unkeyed(&broker(), &topic, &reference_event("PATIENT_CREATED")).await;
    let s = eventually(WAIT, "the third reference event counted", || async {
        let s = summary(&again).await;
        (s["patientsCreated"] == 3).then_some(s)
    })
    .await;
    assert_eq!(s["activePatients"], 3, "redelivered records counted once: {s}");
    let metrics = metrics_text(again.port).await;
    assert!(metrics.contains("analytics_events_total{result=\"duplicate\"} 2"), "{metrics}");
    assert!(metrics.contains("analytics_events_total{result=\"dead_lettered\"} 0"), "{metrics}");
    again.stop().await;
}

#[tokio::test]
async fn an_event_the_database_rejects_goes_to_the_dead_letter_topic_after_retries_and_the_next_counts() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    let analytics = spawn_analytics(None, args.clone()).await;

    // Decodes fine, but PostgreSQL cannot store a date 5000 years before the common era.
    let poison = proto::events::PatientEvent {
        patient_id: uuid::Uuid::new_v4().to_string(),
        event_type: "PATIENT_CREATED".into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        date_of_birth: "-5000-01-01".into(),
        registered_date: "2025-01-01".into(),
        ..Default::default()
    };
    produce_raw(&broker(), &topic, &poison.patient_id, &poison.encode_to_vec()).await;
    let next = proto::events::PatientEvent {
        patient_id: uuid::Uuid::new_v4().to_string(),
        event_id: uuid::Uuid::new_v4().to_string(),
        date_of_birth: "2001-01-01".into(),
        ..poison.clone()
    };
    produce_raw(&broker(), &topic, &next.patient_id, &next.encode_to_vec()).await;

    let dead = read_records(&broker(), &args.dead_letter_topic(), 1, WAIT).await;
    assert_eq!(key(&dead[0]), poison.patient_id);
    let reason = common::kafka::header(&dead[0], "dlt-reason").unwrap();
    assert!(reason.contains("SQLSTATE 22") && reason.contains("3 attempts"), "{reason}");
    let s = eventually(WAIT, "the next event counted", || async {
        let s = summary(&analytics).await;
        (s["patientsCreated"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["activePatients"], 1, "the poison record left nothing behind: {s}");
    let poisoned: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = $1::uuid")
        .bind(&poison.event_id)
        .fetch_one(&analytics.db)
        .await
        .unwrap();
    assert_eq!(poisoned, 0, "its transaction rolled back");
}

#[tokio::test]
async fn billing_dead_letters_an_event_its_database_rejects_and_the_next_event_still_activates() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    let (billing, _grpc) = spawn_billing(args.clone()).await;

    // Another producer's event whose name PostgreSQL cannot store (a NUL in text).
    let poison = proto::events::PatientEvent {
        patient_id: uuid::Uuid::new_v4().to_string(),
        event_type: "PATIENT_CREATED".into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        name: "Bad\u{0}Name".into(),
        email: "bad@example.org".into(),
        ..Default::default()
    };
    produce_raw(&broker(), &topic, &poison.patient_id, &poison.encode_to_vec()).await;
    let next = proto::events::PatientEvent {
        patient_id: uuid::Uuid::new_v4().to_string(),
        event_id: uuid::Uuid::new_v4().to_string(),
        name: "Good Name".into(),
        ..poison.clone()
    };
    produce_raw(&broker(), &topic, &next.patient_id, &next.encode_to_vec()).await;

    let dead = read_records(&broker(), &args.dead_letter_topic(), 1, WAIT).await;
    assert_eq!(key(&dead[0]), poison.patient_id);
    assert_eq!(common::kafka::header(&dead[0], "dlt-group"), Some("billing-service"));
    let reason = common::kafka::header(&dead[0], "dlt-reason").unwrap();
    assert!(reason.contains("SQLSTATE 22") && reason.contains("3 attempts"), "{reason}");
    let status = eventually(WAIT, "the next event applied", || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM billing_accounts WHERE patient_id = $1::uuid")
            .bind(&next.patient_id)
            .fetch_optional(&billing.db)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(status, "ACTIVE", "the partition moved on past the poison record");

    // A deletion carrying such a name (which a deletion never uses) still closes the account.
    let deletion = proto::events::PatientEvent {
        event_type: "PATIENT_DELETED".into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        name: "Bad\u{0}Name".into(),
        ..next.clone()
    };
    produce_raw(&broker(), &topic, &deletion.patient_id, &deletion.encode_to_vec()).await;
    eventually(WAIT, "the deletion applied", || async {
        let status: String = sqlx::query_scalar("SELECT status FROM billing_accounts WHERE patient_id = $1::uuid")
            .bind(&next.patient_id)
            .fetch_one(&billing.db)
            .await
            .unwrap();
        (status == "CLOSED").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_patients_events_out_of_order_on_the_topic_still_end_in_the_right_state() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    let analytics = spawn_analytics(None, args.clone()).await;
    let event = |patient: &str, kind: &str, sequence: u64, born: &str| proto::events::PatientEvent {
        patient_id: patient.into(),
        event_type: kind.into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        date_of_birth: born.into(),
        registered_date: "2025-02-03".into(),
        sequence,
        ..Default::default()
    };
    let (gone, moved) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    // X: its delete overtook its create. Y: its update (born 1999, not 1980) overtook its create.
    for e in [
        event(&gone, "PATIENT_DELETED", 2, "1980-01-01"),
        event(&gone, "PATIENT_CREATED", 1, "1980-01-01"),
        event(&moved, "PATIENT_UPDATED", 2, "1999-01-01"),
        event(&moved, "PATIENT_CREATED", 1, "1980-01-01"),
    ] {
        produce_raw(&broker(), &topic, &e.patient_id, &e.encode_to_vec()).await;
    }
    let s = eventually(WAIT, "all four events counted", || async {
        let s = summary(&analytics).await;
        (s["patientsCreated"] == 2 && s["patientsDeleted"] == 1 && s["patientsUpdated"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["activePatients"], 1, "no ghost of the deleted patient: {s}");
    assert_eq!(s["ageBands"]["18-34"], 1, "the update's state survived the late create: {s}");
    assert_eq!(s["ageBands"]["35-49"], 0, "{s}");
    assert_eq!(s["registrationsPerMonth"], json!({"2025-02": 2}));
}

#[tokio::test]
async fn deleting_a_patient_closes_its_billing_account() {
    let topic = unique_topic();
    let args = kafka_args(&broker(), &topic);
    let (billing, grpc) = spawn_billing(args.clone()).await;
    let patients = spawn_patients(&grpc, args).await;
    let id = create_patient(patients.port, &patient_body(7)).await;
    let other = create_patient(patients.port, &patient_body(8)).await;

    let url = format!("http://127.0.0.1:{}/patients/{id}", patients.port);
    assert_eq!(client().await.delete(url).send().await.unwrap().status(), 204);

    let status_of = |patient: String| {
        let db = billing.db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM billing_accounts WHERE patient_id = $1::uuid")
                .bind(patient)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    eventually(WAIT, "the account closed", || async { (status_of(id.clone()).await == "CLOSED").then_some(()) }).await;
    eventually(WAIT, "the other account active", || async { (status_of(other.clone()).await == "ACTIVE").then_some(()) }).await;
    let contact = |patient: String| {
        let db = billing.db.clone();
        async move {
            sqlx::query_as::<_, (String, String)>("SELECT name, email FROM billing_accounts WHERE patient_id = $1::uuid")
                .bind(patient)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(contact(id).await, (String::new(), String::new()), "the closed account keeps no name or email");
    assert_eq!(contact(other).await.1, "journey8@example.org", "an active account keeps its contact");
}

/// A patient's new name and email reach their billing account (it no longer keeps the
/// registration's for ever), and a patient's events out of order on the topic leave the account
/// with the contact of the latest change, whatever order they came in.
#[tokio::test]
async fn a_patients_changed_contact_reaches_its_billing_account_in_change_order() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    let (billing, grpc) = spawn_billing(args.clone()).await;
    let patients = spawn_patients(&grpc, args).await;
    let contact = |patient: String| {
        let db = billing.db.clone();
        async move {
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT status, name, email FROM billing_accounts WHERE patient_id = $1::uuid",
            )
            .bind(patient)
            .fetch_optional(&db)
            .await
            .unwrap()
        }
    };

    let id = create_patient(patients.port, &patient_body(11)).await;
    let mut changed = patient_body(11);
    changed["name"] = json!("Journey Renamed");
    changed["email"] = json!("journey11.moved@example.org");
    let url = format!("http://127.0.0.1:{}/patients/{id}", patients.port);
    assert_eq!(client().await.put(url).json(&changed).send().await.unwrap().status(), 200);
    let expected = ("ACTIVE".to_owned(), "Journey Renamed".to_owned(), "journey11.moved@example.org".to_owned());
    eventually(WAIT, "the account has the new contact", || async {
        (contact(id.clone()).await.as_ref() == Some(&expected)).then_some(())
    })
    .await;

    // Another patient's changes 3 and 2 overtook each other, and its creation came again last.
    let other = uuid::Uuid::new_v4().to_string();
    let event = |patient: &str, kind: &str, sequence: u64, email: &str| proto::events::PatientEvent {
        patient_id: patient.into(),
        event_type: kind.into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        name: format!("Order {sequence}"),
        email: email.into(),
        date_of_birth: "1980-01-01".into(),
        registered_date: "2025-02-03".into(),
        sequence,
        ..Default::default()
    };
    let marker = uuid::Uuid::new_v4().to_string();
    for e in [
        event(&other, "PATIENT_CREATED", 1, "first@example.org"),
        event(&other, "PATIENT_UPDATED", 3, "third@example.org"),
        event(&other, "PATIENT_UPDATED", 2, "second@example.org"),
        event(&other, "PATIENT_CREATED", 1, "first@example.org"),
        event(&marker, "PATIENT_CREATED", 1, "marker@example.org"),
    ] {
        produce_raw(&broker(), &topic, &e.patient_id, &e.encode_to_vec()).await;
    }
    // One partition: once the last event is applied, every one before it is.
    eventually(WAIT, "the events applied", || async { contact(marker.clone()).await }).await;
    let latest = ("ACTIVE".to_owned(), "Order 3".to_owned(), "third@example.org".to_owned());
    assert_eq!(contact(other).await, Some(latest), "the latest change's contact, not the last one to arrive");
    let metrics = metrics_text(billing.port).await;
    assert!(metrics.contains("billing_accounts_refreshed_total 2"), "the two later changes: {metrics}");
}

/// Billing slow, not down: it commits an account after patient-service gave up on the call (503,
/// no patient). That account's patient never appears on the topic, so after the window it is
/// voided and keeps no name or email; a patient that was created gets its account activated and
/// keeps it past the window.
#[tokio::test]
async fn an_account_whose_patient_never_appears_is_voided_and_a_real_one_activated() {
    let topic = unique_topic();
    let args = kafka_args(&broker(), &topic);
    let window = Duration::from_secs(3);
    let (billing, grpc) = spawn_billing_with(args.clone(), |s| s.pending_account_window_secs = window.as_secs_f64()).await;
    let patients = spawn_patients_with(&grpc, args, |s| s.billing_timeout_ms = 1_000).await;
    let client = client().await;

    // Billing's insert takes 2.5 s to commit, past patient-service's 1 s deadline.
    for ddl in [
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2.5); RETURN NEW; END $$",
        "CREATE TRIGGER slow_insert AFTER INSERT ON billing_accounts FOR EACH ROW EXECUTE FUNCTION slow_insert()",
    ] {
        sqlx::query(ddl).execute(&billing.db).await.unwrap();
    }
    let failed = client.post(format!("http://127.0.0.1:{}/patients", patients.port)).json(&patient_body(1)).send().await.unwrap();
    assert_eq!(failed.status(), 503, "billing too slow: the create fails");
    // Waits for the slow insert to commit (the DROP takes the table's lock).
    sqlx::query("DROP TRIGGER slow_insert ON billing_accounts").execute(&billing.db).await.unwrap();
    let rows = |sql: &'static str| {
        let db = billing.db.clone();
        async move { sqlx::query_as::<_, (String, String, String)>(sql).fetch_all(&db).await.unwrap() }
    };
    eventually(WAIT, "billing committed the account after the caller gave up", || async {
        (rows("SELECT status, name, email FROM billing_accounts").await.len() == 1).then_some(())
    })
    .await;
    let patients_stored: i64 = sqlx::query_scalar("SELECT count(*) FROM patients").fetch_one(&patients.db).await.unwrap();
    assert_eq!(patients_stored, 0, "the failed create stored no patient");

    let real = create_patient(patients.port, &patient_body(2)).await;
    let status_of = |patient: String| {
        let db = billing.db.clone();
        async move {
            sqlx::query_as::<_, (String, String)>("SELECT status, email FROM billing_accounts WHERE patient_id = $1::uuid")
                .bind(patient)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    eventually(WAIT, "the real patient's account active", || async {
        (status_of(real.clone()).await.0 == "ACTIVE").then_some(())
    })
    .await;
    let orphan = eventually(WAIT, "the orphan voided", || async {
        let orphan = rows("SELECT status, name, email FROM billing_accounts WHERE patient_id <> (SELECT patient_id FROM billing_accounts WHERE status = 'ACTIVE')").await;
        (orphan.len() == 1 && orphan[0].0 != "PENDING").then(|| orphan[0].clone())
    })
    .await;
    assert_eq!(orphan, ("VOIDED".into(), String::new(), String::new()), "voided, with no name or email");

    tokio::time::sleep(window + Duration::from_secs(1)).await;
    assert_eq!(status_of(real).await, ("ACTIVE".into(), "journey2@example.org".into()), "a real patient's account stays");
    let metrics = metrics_text(billing.port).await;
    assert!(metrics.contains("billing_accounts_voided_total 1"), "{metrics}");
    assert!(metrics.contains("billing_accounts_activated_total{how=\"pending\"} 1"), "{metrics}");
}

/// A record as the consumer receives it from `topic` at `offset`.
fn record_of(topic: &str, offset: i64, event: &proto::events::PatientEvent) -> rdkafka::message::OwnedMessage {
    rdkafka::message::OwnedMessage::new(
        Some(event.encode_to_vec()),
        Some(event.patient_id.clone().into_bytes()),
        topic.to_owned(),
        rdkafka::Timestamp::NotAvailable,
        0,
        offset,
        None,
    )
}

fn patient_event(patient: &str, kind: &str, sequence: u64, born: &str) -> proto::events::PatientEvent {
    proto::events::PatientEvent {
        patient_id: patient.into(),
        name: "Batch Patient".into(),
        email: "batch@example.org".into(),
        event_type: kind.into(),
        event_id: uuid::Uuid::new_v4().to_string(),
        date_of_birth: born.into(),
        registered_date: "2025-04-05".into(),
        sequence,
        ..Default::default()
    }
}

#[tokio::test]
async fn analytics_applies_records_fetched_together_in_order_all_or_none() {
    use common::kafka::{Batch, RecordHandler};
    let topic = unique_topic();
    let args = kafka_args(&broker(), &unique_topic()); // the service's own consumer stays idle
    let analytics = spawn_analytics(None, args.clone()).await;
    let metrics = common::metrics::Registry::new();
    let handler = analytics_service::consumer::AnalyticsHandler {
        db: analytics.db.clone(),
        dead_letters: args.dead_letters("analytics-test", metrics.clone(), "dead_lettered").unwrap(),
        metrics: metrics.clone(),
        appointment_topic: "appointments-unused".into(),
        zone: Default::default(),
    };
    let (p1, p2) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    let created2 = patient_event(&p2, "PATIENT_CREATED", 1, "1990-01-01");
    let batch = [
        record_of(&topic, 0, &patient_event(&p1, "PATIENT_CREATED", 1, "1980-01-01")),
        record_of(&topic, 1, &created2),
        record_of(&topic, 2, &patient_event(&p1, "PATIENT_UPDATED", 2, "2015-01-01")),
        record_of(&topic, 3, &created2), // redelivered within the batch
        record_of(&topic, 4, &patient_event(&p2, "PATIENT_DELETED", 2, "1990-01-01")),
        // An older change of p1 after its newer one: counted, its state not taken.
        record_of(&topic, 5, &patient_event(&p1, "PATIENT_UPDATED", 1, "1970-01-01")),
    ];
    assert_eq!(handler.handle_batch(&batch).await.unwrap(), Batch::Applied);
    let s = summary(&analytics).await;
    let totals =
        |s: &serde_json::Value| (s["patientsCreated"].as_i64(), s["patientsUpdated"].as_i64(), s["patientsDeleted"].as_i64());
    assert_eq!(totals(&s), (Some(2), Some(2), Some(1)), "the redelivery is not counted, the stale change is: {s}");
    assert_eq!(s["registrationsPerMonth"], serde_json::json!({"2025-04": 2}), "{s}");
    assert_eq!(s["activePatients"], 1, "{s}");
    assert_eq!(s["ageBands"]["0-17"], 1, "the update, applied after the create, decides: {s}");
    assert_eq!(metrics.get("analytics_events_total{result=\"duplicate\"}"), 1);
    assert_eq!(metrics.get("analytics_events_total{result=\"applied\"}"), 5, "the stale change among them");

    let processed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_events").fetch_one(&analytics.db).await.unwrap()
    };
    // A record the database rejects: the statement applies none of the batch.
    let fine = patient_event(&uuid::Uuid::new_v4().to_string(), "PATIENT_CREATED", 1, "2000-01-01");
    let poison = patient_event(&uuid::Uuid::new_v4().to_string(), "PATIENT_CREATED", 1, "-5000-01-01");
    assert!(handler.handle_batch(&[record_of(&topic, 6, &fine), record_of(&topic, 7, &poison)]).await.is_err());
    assert_eq!(processed().await, 5, "nothing of the failed batch was applied");
    let s = summary(&analytics).await;
    assert_eq!(
        (totals(&s), &s["registrationsPerMonth"]),
        ((Some(2), Some(2), Some(1)), &serde_json::json!({"2025-04": 2})),
        "{s}"
    );
    // A record that does not decode: the batch goes one by one (so it can be dead-lettered).
    let garbage = rdkafka::message::OwnedMessage::new(
        Some(b"\xff not an event".to_vec()),
        None,
        topic.clone(),
        rdkafka::Timestamp::NotAvailable,
        0,
        7,
        None,
    );
    assert_eq!(handler.handle_batch(&[record_of(&topic, 6, &fine), garbage]).await.unwrap(), Batch::OneByOne);
    assert_eq!(processed().await, 5);
    analytics.stop().await;
}

#[tokio::test]
async fn billing_applies_records_fetched_together_in_order_all_or_none() {
    use common::kafka::{Batch, RecordHandler};
    let topic = unique_topic();
    let args = kafka_args(&broker(), &unique_topic()); // the service's own consumer stays idle
    let (billing, _grpc) = spawn_billing(args.clone()).await;
    let metrics = common::metrics::Registry::new();
    let handler = billing_service::consumer::BillingEventHandler {
        db: billing.db.clone(),
        dead_letters: args.dead_letters("billing-test", metrics.clone(), "dead_lettered").unwrap(),
        metrics: metrics.clone(),
    };
    let (pending, gone, unknown) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for patient in [pending, gone] {
        sqlx::query("INSERT INTO billing_accounts (id, patient_id, name, email, status, pending_since) VALUES ($1, $2, 'P', 'p@example.org', 'PENDING', now())")
            .bind(uuid::Uuid::new_v4())
            .bind(patient)
            .execute(&billing.db)
            .await
            .unwrap();
    }
    let event = |p: uuid::Uuid, kind: &str| patient_event(&p.to_string(), kind, 1, "1990-01-01");
    let batch = [
        record_of(&topic, 0, &event(pending, "PATIENT_CREATED")),
        record_of(&topic, 1, &event(gone, "PATIENT_CREATED")),
        record_of(&topic, 2, &event(gone, "PATIENT_DELETED")),
        record_of(&topic, 3, &event(unknown, "PATIENT_UPDATED")),
        record_of(&topic, 4, &event(pending, "PATIENT_UPDATED")),
    ];
    assert_eq!(handler.handle_batch(&batch).await.unwrap(), Batch::Applied);
    let account = |p: uuid::Uuid| {
        let db = billing.db.clone();
        async move {
            sqlx::query_as::<_, (String, String)>("SELECT status, name FROM billing_accounts WHERE patient_id = $1")
                .bind(p)
                .fetch_optional(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        account(pending).await,
        Some(("ACTIVE".into(), "Batch Patient".into())),
        "the patient's own contact, from its event"
    );
    assert_eq!(account(gone).await, Some(("CLOSED".into(), String::new())), "activated, then closed: in order");
    assert_eq!(account(unknown).await, Some(("ACTIVE".into(), "Batch Patient".into())), "opened from the event");
    assert_eq!(metrics.get("billing_accounts_activated_total{how=\"pending\"}"), 2);
    assert_eq!(metrics.get("billing_accounts_activated_total{how=\"missing\"}"), 1);
    assert_eq!(metrics.get("billing_accounts_closed_total"), 1);

    // A record the database rejects (a NUL in a name): the statement applies none of the batch.
    let (fine, bad) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let mut poison = event(bad, "PATIENT_CREATED");
    poison.name = "Bad\u{0}Name".into();
    assert!(handler
        .handle_batch(&[record_of(&topic, 5, &event(fine, "PATIENT_CREATED")), record_of(&topic, 6, &poison)])
        .await
        .is_err());
    assert_eq!(account(fine).await, None, "nothing of the failed batch was applied");
    billing.stop().await;
}

#[tokio::test]
async fn events_already_on_the_topic_are_consumed_together_and_a_poison_one_among_them_is_dead_lettered() {
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    // On the topic before analytics starts: its first fetch takes them together.
    let mut events: Vec<_> =
        (0..30).map(|_| patient_event(&uuid::Uuid::new_v4().to_string(), "PATIENT_CREATED", 1, "1990-01-01")).collect();
    events[17].date_of_birth = "-5000-01-01".into(); // decodes, but PostgreSQL cannot store it
    for e in &events {
        produce_raw(&broker(), &topic, &e.patient_id, &e.encode_to_vec()).await;
    }
    let analytics = spawn_analytics(None, args.clone()).await;
    let dead = read_records(&broker(), &args.dead_letter_topic(), 1, WAIT).await;
    assert_eq!(key(&dead[0]), events[17].patient_id);
    let s = eventually(WAIT, "the 29 others counted", || async {
        let s = summary(&analytics).await;
        (s["patientsCreated"] == 29).then_some(s)
    })
    .await;
    assert_eq!(s["activePatients"], 29, "{s}");
    let metrics = metrics_text(analytics.port).await;
    assert!(metrics.contains("analytics_events_total{result=\"dead_lettered\"} 1"), "{metrics}");
    analytics.stop().await;
}

/// Hands over nothing but records which offsets the consume loop gave it, and how.
#[derive(Default)]
struct Recorder {
    batches: std::sync::Mutex<Vec<Vec<i64>>>,
    singles: std::sync::Mutex<Vec<i64>>,
}

impl Recorder {
    fn offsets(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self.batches.lock().unwrap().iter().flatten().copied().collect();
        all.extend(self.singles.lock().unwrap().iter().copied());
        all.sort_unstable();
        all
    }
}

impl common::kafka::RecordHandler for Recorder {
    async fn handle(&self, record: &rdkafka::message::OwnedMessage) -> anyhow::Result<()> {
        self.singles.lock().unwrap().push(record.offset());
        Ok(())
    }

    async fn handle_batch(&self, records: &[rdkafka::message::OwnedMessage]) -> anyhow::Result<common::kafka::Batch> {
        self.batches.lock().unwrap().push(records.iter().map(|r| r.offset()).collect());
        Ok(common::kafka::Batch::Applied)
    }
}

#[tokio::test]
async fn the_consume_loop_takes_fetched_records_together_and_a_restart_hands_none_over_again() {
    use std::sync::Arc;
    let topic = unique_topic();
    let mut args = kafka_args(&broker(), &topic);
    args.kafka_topic_partitions = 1;
    args.ensure_topics(&[&topic]).await;
    for n in 0..50 {
        produce_raw(&broker(), &topic, "k", format!("record {n}").as_bytes()).await;
    }
    let group = format!("consume-loop-{}", uuid::Uuid::new_v4().simple());
    let run = |recorder: Arc<Recorder>| {
        let consumer = args.consumer(&group).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { common::kafka::consume(consumer, &*recorder, stop).await }
        });
        (stop, task)
    };

    let first = Arc::new(Recorder::default());
    let (stop, task) = run(first.clone());
    eventually(WAIT, "the 50 records handed over", || async { (first.offsets() == (0..50).collect::<Vec<_>>()).then_some(()) })
        .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(
        first.batches.lock().unwrap().iter().any(|b| b.len() > 1),
        "records already fetched are taken together: {:?}",
        first.batches.lock().unwrap()
    );

    // The same group again: it starts after the last record handed over (each batch's offsets
    // were stored, then committed on stop), so only the new record arrives.
    produce_raw(&broker(), &topic, "k", b"sentinel").await;
    let second = Arc::new(Recorder::default());
    let (stop, task) = run(second.clone());
    eventually(WAIT, "the sentinel handed over", || async { second.offsets().contains(&50).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(second.offsets(), vec![50], "nothing handed over twice");
}
