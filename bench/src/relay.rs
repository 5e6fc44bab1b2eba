//! Outbox relay throughput: a patient-service database whose outbox is pre-filled, then a
//! patient-service process publishing it to its own topic (so no consumer takes part).

use std::time::{Duration, Instant};

use anyhow::Context;
use dev_stack::net::free_port;
use prost::Message;
use proto::events::PatientEvent;

use crate::stack::Stack;

pub struct RelayResult {
    pub events: i64,
    pub events_per_sec: f64,
    pub wall_secs: f64,
}

pub async fn measure(stack: &mut Stack, rows: i64) -> anyhow::Result<RelayResult> {
    let url = stack.pg.url("relay_bench");
    let db = sqlx::PgPool::connect(&url).await?;
    patient_service::MIGRATOR.run(&db).await?;
    let payload = PatientEvent {
        patient_id: "00000000-0000-4000-8000-000000000001".into(),
        name: "Relay Patient".into(),
        email: "relay@example.com".into(),
        event_type: "PATIENT_CREATED".into(),
        ..Default::default()
    }
    .encode_to_vec();
    sqlx::query(
        "INSERT INTO outbox (event_id, patient_id, event_type, payload)
         SELECT gen_random_uuid(), gen_random_uuid(), 'PATIENT_CREATED', $1 FROM generate_series(1, $2)",
    )
    .bind(payload)
    .bind(rows)
    .execute(&db)
    .await?;

    let port = free_port()?;
    // The platform's patient-service (its realm, its own client, billing, Kafka) on another
    // database, port and topic.
    let mut spec = stack.specs().into_iter().find(|s| s.name == "patient-service").context("patient-service spec")?;
    for (key, value) in [
        ("DATABASE_URL", url),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("KAFKA_TOPIC", "bench-relay".into()),
        ("SEED_DEMO_DATA", "false".into()),
    ] {
        spec.env.retain(|(k, _)| k != key);
        spec.env.push((key.into(), value));
    }
    spec.ready_port = port;
    // The platform's own patient-service keeps running; this one gets its own pid and log.
    let relay_dirs = dev_stack::services::ServiceDirs {
        run: stack.dirs.run.join("relay"),
        logs: stack.dirs.logs.join("relay"),
        bin: stack.dirs.bin.clone(),
    };
    let started = Instant::now();
    dev_stack::services::start(&spec, &relay_dirs)?;
    let result = wait_until_published(&db, rows, started, &relay_dirs).await;
    dev_stack::services::stop(spec.name, &relay_dirs, Duration::from_secs(10));
    result
}

async fn wait_until_published(
    db: &sqlx::PgPool,
    rows: i64,
    started: Instant,
    dirs: &dev_stack::services::ServiceDirs,
) -> anyhow::Result<RelayResult> {
    anyhow::ensure!(rows > 0, "the relay measurement needs at least one event");
    loop {
        let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(db).await?;
        if unsent == 0 {
            break;
        }
        if dirs.running_pid("patient-service").is_none() {
            let log = dev_stack::services::tail(&dirs.log_file("patient-service"), 20);
            anyhow::bail!("the relay's patient-service exited with {unsent} events unpublished:\n{log}");
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "{unsent} events still unpublished after 600 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let span: f64 =
        sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM max(sent_at) - min(sent_at))::float8 FROM outbox").fetch_one(db).await?;
    Ok(RelayResult { events: rows, events_per_sec: rows as f64 / span.max(1e-3), wall_secs })
}
