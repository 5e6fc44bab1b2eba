//! The 15 well-known demo patients (fixed UUIDs of the Java reference), seeded behind a flag.

use anyhow::Context;
use chrono::NaiveDate;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::Patient,
    outbox::{self, EventType},
};

const DEMO_PATIENTS: &str = include_str!("../data/demo-patients.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DemoPatient {
    id: Uuid,
    name: String,
    email: String,
    address: String,
    date_of_birth: NaiveDate,
    registered_date: NaiveDate,
}

/// Inserts the demo patients that are not there yet (by id or email) and never were, each with
/// its `PATIENT_CREATED` outbox event, in one transaction. Returns how many were inserted.
pub async fn seed(pool: &PgPool) -> anyhow::Result<usize> {
    let demo: Vec<DemoPatient> = serde_json::from_str(DEMO_PATIENTS).context("embedded demo data is invalid")?;
    let mut tx = pool.begin().await.context("failed to begin demo seed")?;
    // A demo patient recorded as seeded has been here: one that was deleted stays deleted, at
    // every restart. (One seeded before that record existed has an event in the outbox, unless
    // the outbox retention deleted it since: both are read, and the record is written for all.)
    let ids: Vec<Uuid> = demo.iter().map(|p| p.id).collect();
    let known: Vec<Uuid> = sqlx::query_scalar(
        "SELECT patient_id FROM demo_seeded WHERE patient_id = ANY($1)
         UNION SELECT patient_id FROM outbox WHERE patient_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .context("failed to read which demo patients were seeded before")?;
    sqlx::query("INSERT INTO demo_seeded (patient_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .context("failed to record the demo patients as seeded")?;
    let mut inserted = 0;
    for p in demo.into_iter().filter(|p| !known.contains(&p.id)) {
        let row = sqlx::query_as::<_, Patient>(
            r#"
            INSERT INTO patients (id, name, email, address, date_of_birth, registered_date)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT DO NOTHING
            RETURNING id, name, email, address, date_of_birth, registered_date, updated_at, version
            "#,
        )
        .bind(p.id)
        .bind(&p.name)
        .bind(&p.email)
        .bind(&p.address)
        .bind(p.date_of_birth)
        .bind(p.registered_date)
        .fetch_optional(&mut *tx)
        .await
        .context("failed to insert demo patient")?;
        if let Some(patient) = row {
            outbox::record(&mut tx, EventType::Created, &patient, None).await.context("failed to write demo event")?;
            inserted += 1;
        }
    }
    tx.commit().await.context("failed to commit demo seed")?;
    tracing::info!(inserted, "demo patients seeded");
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_demo_data_has_fifteen_distinct_patients() {
        let demo: Vec<super::DemoPatient> = serde_json::from_str(super::DEMO_PATIENTS).unwrap();
        let mut ids: Vec<_> = demo.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!((demo.len(), ids.len()), (15, 15));
    }
}
