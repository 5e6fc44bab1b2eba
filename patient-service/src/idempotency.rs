//! `Idempotency-Key` on `POST /patients` (IETF httpapi-idempotency-key draft):
//!
//! - same caller, same key, same body: the first 201 is replayed (`Idempotent-Replayed: true`);
//! - same key, different body: 422; the same key while its first request still runs: 409;
//! - a key stands for ONE patient id, reserved with the key: a retry after a 503 or a lost
//!   response reuses it, so billing (idempotent per patient id) opens no second account and no
//!   second patient is made;
//! - keys live 24 hours, then they (and the response they hold) are deleted by a sweep every
//!   `IDEMPOTENCY_SWEEP_SECS`;
//! - a deleted patient's keys lose at once the personal data they held (the stored response and
//!   its Location; the request's SHA-256 stays) but stay for the rest of their 24 hours: a late
//!   retry of the create is a 409 saying the patient was deleted, not a new patient made from a
//!   deleted one's data (another body is still a 422).

use axum::http::HeaderMap;
use serde_json::Value;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::Error;

pub const HEADER: &str = "idempotency-key";
/// How long one request may work on a key before a retry may take it over.
const LEASE_SECS: i64 = 60;
/// The draft's recommended upper bound on a key's length.
const MAX_KEY_CHARS: usize = 255;

/// A client's idempotency key: 1–255 visible ASCII characters (a structured-field string; the
/// quotes are optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The request's key, if it sent one; 400 for a malformed or repeated header.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, Error> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(Error::BadRequest("send one Idempotency-Key header".into()));
        }
        let raw = value.to_str().map_err(|_| Error::BadRequest("Idempotency-Key must be visible ASCII".into()))?.trim();
        let inner = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(raw);
        let ok = (1..=MAX_KEY_CHARS).contains(&inner.len())
            && inner.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
        if !ok {
            return Err(Error::BadRequest(format!("Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters")));
        }
        Ok(Some(Self(inner.to_owned())))
    }
}

/// What a create with a key may do.
#[derive(Debug)]
pub enum Claim {
    /// Go ahead and create the patient with this id.
    Proceed { patient_id: Uuid },
    /// Already done: answer with this.
    Replay { patient_id: Uuid, response: Value, location: String },
    /// The key was used with another body.
    Mismatch,
    /// The key's first request is still running.
    InProgress,
    /// The key created a patient that has since been deleted.
    PatientDeleted,
}

/// Deletes expired keys every `every` until `stop`, in bounded chunks: the replayable 201 bodies
/// they hold are personal data, kept no longer than the 24 hours a key means something.
pub async fn sweep_until(
    db: PgPool,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    while !stop.is_cancelled() {
        match sweep(&db, &stop).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired idempotency keys deleted"),
            Err(err) => tracing::warn!(error = %err, "idempotency key sweep failed; tried again at the next one"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    Ok(())
}

/// Deletes expired keys in chunks of 1000 until none is left or `stop`. Keys a request works on
/// (locked) or that another replica's sweep holds are left for the next sweep.
async fn sweep(db: &PgPool, stop: &tokio_util::sync::CancellationToken) -> sqlx::Result<u64> {
    let mut deleted = 0;
    while !stop.is_cancelled() {
        let chunk = sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid IN
                (SELECT ctid FROM idempotency_keys
                 WHERE created_at < now() - interval '24 hours' AND (locked_until IS NULL OR locked_until < now())
                 ORDER BY created_at LIMIT 1000 FOR UPDATE SKIP LOCKED)",
        )
        .execute(db)
        .await?
        .rows_affected();
        deleted += chunk;
        if chunk == 0 {
            break;
        }
    }
    Ok(deleted)
}

/// Reserves `key` for `subject`'s request with this body, or says why not. `body` is the
/// request's canonical JSON; only its SHA-256 is kept.
#[tracing::instrument(skip_all)]
pub async fn claim(db: &PgPool, subject: &str, key: &Key, body: &str) -> sqlx::Result<Claim> {
    // An expired key is a new key, whatever the backlog the sweep has yet to delete.
    sqlx::query("DELETE FROM idempotency_keys WHERE subject = $1 AND key = $2 AND created_at < now() - interval '24 hours'")
        .bind(subject)
        .bind(&key.0)
        .execute(db)
        .await?;
    let reserved: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (subject, key, request_hash, patient_id, locked_until)
         VALUES ($1, $2, sha256(convert_to($3, 'UTF8')), $4, now() + make_interval(secs => $5))
         ON CONFLICT (subject, key) DO NOTHING
         RETURNING patient_id",
    )
    .bind(subject)
    .bind(&key.0)
    .bind(body)
    .bind(Uuid::new_v4())
    .bind(LEASE_SECS as f64)
    .fetch_optional(db)
    .await?;
    if let Some(patient_id) = reserved {
        return Ok(Claim::Proceed { patient_id });
    }
    // Known key: take it over if its earlier request ended without creating (503, 409, crash).
    let resumed: Option<Uuid> = sqlx::query_scalar(
        "UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $4)
         WHERE subject = $1 AND key = $2 AND request_hash = sha256(convert_to($3, 'UTF8'))
           AND completed_at IS NULL AND patient_deleted_at IS NULL AND (locked_until IS NULL OR locked_until < now())
         RETURNING patient_id",
    )
    .bind(subject)
    .bind(&key.0)
    .bind(body)
    .bind(LEASE_SECS as f64)
    .fetch_optional(db)
    .await?;
    if let Some(patient_id) = resumed {
        return Ok(Claim::Proceed { patient_id });
    }
    let known: Option<KnownKey> = sqlx::query_as(
        "SELECT patient_deleted_at IS NOT NULL AS patient_deleted, request_hash = sha256(convert_to($3, 'UTF8')) AS same_body,
                patient_id, response, location
         FROM idempotency_keys WHERE subject = $1 AND key = $2",
    )
    .bind(subject)
    .bind(&key.0)
    .bind(body)
    .fetch_optional(db)
    .await?;
    Ok(match known {
        Some(KnownKey { same_body: false, .. }) => Claim::Mismatch,
        Some(KnownKey { patient_deleted: true, .. }) => Claim::PatientDeleted,
        Some(KnownKey { patient_id, response: Some(response), location: Some(location), .. }) => {
            Claim::Replay { patient_id, response, location }
        }
        _ => Claim::InProgress,
    })
}

/// A key already used, as [`claim`] reads it.
#[derive(sqlx::FromRow)]
struct KnownKey {
    patient_deleted: bool,
    /// Whether the request's body hashes as the key's first one did.
    same_body: bool,
    patient_id: Uuid,
    response: Option<Value>,
    location: Option<String>,
}

/// Records the create's response, in the create's own transaction.
pub async fn complete(
    tx: &mut Transaction<'_, Postgres>,
    subject: &str,
    key: &Key,
    response: &Value,
    location: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET completed_at = now(), locked_until = NULL, response = $3, location = $4
         WHERE subject = $1 AND key = $2",
    )
    .bind(subject)
    .bind(&key.0)
    .bind(response)
    .bind(location)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// A request's hold on a key. Unless [`Lease::completed`] is called, dropping it (an error, or
/// the handler dropped because the client went away) frees the key at once, so a retry does not
/// wait for the lease to run out; a crashed process's lease simply expires.
pub struct Lease {
    db: PgPool,
    subject: String,
    key: Key,
    armed: bool,
}

impl Lease {
    pub fn new(db: PgPool, subject: &str, key: Key) -> Self {
        Self { db, subject: subject.to_owned(), key, armed: true }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The create committed (and recorded its response): nothing to free.
    pub fn completed(mut self) {
        self.armed = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (db, subject, key) = (self.db.clone(), std::mem::take(&mut self.subject), self.key.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let released = sqlx::query(
                "UPDATE idempotency_keys SET locked_until = NULL WHERE subject = $1 AND key = $2 AND completed_at IS NULL",
            )
            .bind(&subject)
            .bind(&key.0)
            .execute(&db)
            .await;
            if let Err(err) = released {
                tracing::warn!(error = %err, "could not free an idempotency key; it frees itself when its lease ends");
            }
        });
    }
}

/// A deleted patient's keys lose its personal data (the stored response and Location) and are
/// marked, so a late retry is refused rather than creating the patient again; the sweep deletes
/// them when their 24 hours are over.
pub async fn forget_patient(db: impl PgExecutor<'_>, patient_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET response = NULL, location = NULL, locked_until = NULL, patient_deleted_at = now()
         WHERE patient_id = $1",
    )
    .bind(patient_id)
    .execute(db)
    .await
    .map(|_| ())
}
