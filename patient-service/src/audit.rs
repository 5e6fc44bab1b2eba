//! The audit trail of patient data (SPEC §11): who (`sub`, `azp`) did what (action, patient id or
//! the shape of a list filter, never a name or an email) with which outcome, when, from where,
//! under which request and trace id.
//!
//! - [`guard`] checks every caller (the gateway's rules, `verifier::web`), then audits: a refused
//!   caller (403) is recorded before the refusal is sent; a read is recorded after the handler
//!   ran and before its response leaves, and if that record cannot be written the read fails
//!   (no unaudited access).
//! - A change is recorded by its handler inside the change's own transaction
//!   ([`AuditContext::record`]) and the response carries [`AuditedInTransaction`].
//! - The table is append-only and hash-chained (see the migration); [`verify_chain`] checks it.

use std::net::SocketAddr;

use anyhow::Context;
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{request::Parts, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::TryStreamExt;
use sqlx::{error::BoxDynError, postgres::PgArguments, Arguments, PgExecutor, PgPool, Row};
use uuid::Uuid;
use verifier::{
    web::{self, Caller},
    Principal,
};

use crate::routes::AppState;

/// What was done to patient data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Search,
    Read,
    Create,
    Update,
    Delete,
    BillRead,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Search => "patient.search",
            Action::Read => "patient.read",
            Action::Create => "patient.create",
            Action::Update => "patient.update",
            Action::Delete => "patient.delete",
            Action::BillRead => "bill.read",
        }
    }

    /// The audited action of a request, `None` for routes that touch no patient data.
    fn of<'p>(method: &axum::http::Method, path: &'p str) -> Option<(Action, Option<&'p str>)> {
        use axum::http::Method;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (segments.as_slice(), verifier::access::as_routed(method)) {
            (["patients"], &Method::GET) => Some((Action::Search, None)),
            (["patients"], &Method::POST) => Some((Action::Create, None)),
            (["patients", id], &Method::GET) => Some((Action::Read, Some(id))),
            (["patients", id], &Method::PUT) => Some((Action::Update, Some(id))),
            (["patients", id], &Method::DELETE) => Some((Action::Delete, Some(id))),
            (["patients", id, "bill"], &Method::GET) => Some((Action::BillRead, Some(id))),
            _ => None,
        }
    }
}

/// The most of a request header an audit record keeps.
const MAX_HEADER: usize = 200;

/// An `X-Forwarded-For` chain to keep, at most [`MAX_HEADER`] characters: its right end, where
/// the hops nearest to this service (the gateway, then any proxy the gateway trusts) wrote
/// their entries. Entries further left are the least trustworthy; a cut chain starts with `…`.
fn chain_tail(chain: &str) -> String {
    const CUT: &str = "…, ";
    let length = chain.chars().count();
    if length <= MAX_HEADER {
        return chain.to_owned();
    }
    let room = MAX_HEADER - CUT.chars().count();
    let (start, _) = chain.char_indices().nth(length - room).expect("within the chain");
    let (before, tail) = chain.split_at(start);
    // Whole entries only: the piece of one left at the cut goes, unless the cut fell between
    // entries; a single entry longer than the room keeps its end.
    let tail = match before.trim_end().ends_with(',') {
        true => tail,
        false => tail.split_once(',').map_or(tail, |(_, rest)| rest),
    };
    format!("{CUT}{}", tail.trim_start())
}

/// The request's side of an audit record, gathered before the handler runs.
#[derive(Debug, Clone)]
pub struct AuditContext {
    pub subject: String,
    pub client_id: Option<String>,
    pub action: Action,
    pub patient_id: Option<Uuid>,
    /// The list filter's shape, e.g. `page=0 size=50 name=(given)`.
    pub query: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub client_address: Option<String>,
    pub forwarded_for: Option<String>,
}

/// On a response whose audit record was written in the handler's transaction.
#[derive(Debug, Clone, Copy)]
pub struct AuditedInTransaction;

impl AuditContext {
    /// The context of an audited request, `None` for routes outside the trail.
    fn of(head: &Parts, principal: &Principal) -> Option<Self> {
        let (action, id) = Action::of(&head.method, head.uri.path())?;
        let header = |name: &str| {
            head.headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.chars().take(MAX_HEADER).collect::<String>())
        };
        // A chain may come in several header lines, in order; lines that are not text are left out.
        let chain: Vec<&str> = head.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        let trace_id = header("traceparent").and_then(|t| t.split('-').nth(1).map(str::to_owned)).filter(|t| t.len() == 32);
        Some(Self {
            subject: principal.subject.clone(),
            client_id: principal.client.clone(),
            action,
            // The handler's own reading of the id (a spelling it refuses names no patient).
            patient_id: id.and_then(crate::domain::parse_uuid),
            query: (action == Action::Search).then(|| filter_shape(head.uri.query().unwrap_or(""))),
            request_id: header("x-request-id"),
            trace_id,
            client_address: head.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()),
            forwarded_for: (!chain.is_empty()).then(|| chain_tail(&chain.join(", "))),
        })
    }

    /// The audit columns a context fills, besides the patient id and the chain's own.
    pub const COLUMNS: &'static str =
        "subject, client_id, action, query, outcome, request_id, trace_id, client_address, forwarded_for";

    /// Adds this context's values of [`Self::COLUMNS`] to `args`, and returns their placeholders
    /// (`$n, …`), for a statement that writes the audit row beside other changes.
    pub fn add_values(&self, args: &mut PgArguments, outcome: StatusCode) -> Result<String, BoxDynError> {
        let first = args.len() + 1;
        args.add(&self.subject)?;
        args.add(&self.client_id)?;
        args.add(self.action.as_str())?;
        args.add(&self.query)?;
        args.add(outcome.as_u16() as i16)?;
        args.add(&self.request_id)?;
        args.add(&self.trace_id)?;
        args.add(&self.client_address)?;
        args.add(&self.forwarded_for)?;
        Ok((first..args.len() + 1).map(|n| format!("${n}")).collect::<Vec<_>>().join(", "))
    }

    /// Appends the record with `outcome` (inside the caller's transaction, when given one).
    #[tracing::instrument(skip_all, fields(action = self.action.as_str(), outcome = outcome.as_u16()))]
    pub async fn record(&self, db: impl PgExecutor<'_>, outcome: StatusCode, patient_id: Option<Uuid>) -> sqlx::Result<()> {
        let mut args = PgArguments::default();
        args.add(patient_id.or(self.patient_id)).map_err(sqlx::Error::Encode)?;
        let values = self.add_values(&mut args, outcome).map_err(sqlx::Error::Encode)?;
        let sql = format!("INSERT INTO audit_log (patient_id, {}, prev_hash, hash) VALUES ($1, {values}, '', '')", Self::COLUMNS);
        sqlx::query_with(&sql, args).execute(db).await.map(|_| ())
    }
}

/// Which filters a list used and its paging, never the filter values (names, emails).
fn filter_shape(query: &str) -> String {
    let mut shape = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "page" | "size" => {
                shape.push(format!("{key}={}", value.chars().filter(char::is_ascii_digit).take(9).collect::<String>()))
            }
            "name" | "email" => shape.push(format!("{key}=(given)")),
            _ => {}
        }
    }
    shape.sort();
    shape.join(" ")
}

/// axum middleware in front of every API route: the caller check, then the audit record.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut head, body) = req.into_parts();
    let principal = match caller(&state, &head).await {
        Ok(principal) => principal,
        Err(denied) => {
            tracing::info!(outcome = %denied, "request refused");
            return denied.into_response();
        }
    };
    let context = AuditContext::of(&head, &principal);
    head.extensions.insert(Caller(principal));
    if let Some(context) = &context {
        head.extensions.insert(context.clone());
    }
    // Cut a little before the edge's own time limit, so a request that took too long is still
    // recorded (as the 503 it got) instead of vanishing with the dropped handler.
    let deadline = head.extensions.get::<common::edge::Deadline>().copied();
    let work = next.run(Request::from_parts(head, body));
    let response = match deadline {
        Some(deadline) => deadline.run(work).await,
        None => work.await,
    };
    let Some(context) = context else { return response };
    if response.extensions().get::<AuditedInTransaction>().is_some() {
        return response;
    }
    match context.record(&state.db, response.status(), None).await {
        Ok(()) => response,
        Err(err) => {
            tracing::error!(error = %err, action = context.action.as_str(), "audit record failed; access refused");
            crate::Error::Internal(anyhow::Error::new(err).context("audit record failed")).into_response()
        }
    }
}

/// Route rule, token, roles. A caller we know but refuse is recorded before the refusal is
/// sent; without an identity there is no record (an anonymous flood must not become a flood of
/// audit writes; it is logged and counted instead).
async fn caller(state: &AppState, head: &Parts) -> Result<std::sync::Arc<Principal>, web::Denied> {
    let rule = web::rule(&head.method, head.uri.path())?;
    let principal = web::authenticate(&state.verifier, &head.headers).await?;
    if let Err(denied) = web::permit(&rule, &principal) {
        if let Some(context) = AuditContext::of(head, &principal) {
            if let Err(err) = context.record(&state.db, denied.status(), None).await {
                tracing::error!(error = %err, "could not audit a refused request");
            }
        }
        return Err(denied);
    }
    Ok(principal)
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Rows checked.
    pub rows: u64,
    /// `seq` of the first row whose link or content does not match, if any.
    pub first_broken: Option<i64>,
}

/// Walks the whole chain: every row's `seq` follows the previous one, its `prev_hash` is the
/// previous row's `hash` (the genesis value for the first), its `hash` matches its content, and
/// the head names the last row.
#[tracing::instrument(skip_all)]
pub async fn verify_chain(db: &PgPool) -> anyhow::Result<ChainReport> {
    // One snapshot for the rows and the head: appends committed meanwhile are simply not seen.
    let mut tx = db.begin().await.context("failed to begin the check")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await.context("snapshot")?;
    let genesis: Vec<u8> = sqlx::query_scalar("SELECT sha256(convert_to('patient-service audit genesis', 'UTF8'))")
        .fetch_one(&mut *tx)
        .await
        .context("genesis hash")?;
    let (head_seq, head_hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_head").fetch_one(&mut *tx).await.context("reading the chain head")?;
    let (mut expected_seq, mut previous_hash, mut count) = (1i64, genesis, 0u64);
    {
        let mut rows = sqlx::query("SELECT seq, prev_hash, hash, audit_row_hash(a) AS recomputed FROM audit_log a ORDER BY seq")
            .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await.context("reading the audit trail")? {
            let seq: i64 = row.get("seq");
            let (prev_hash, hash, recomputed): (Vec<u8>, Vec<u8>, Vec<u8>) =
                (row.get("prev_hash"), row.get("hash"), row.get("recomputed"));
            count += 1;
            if seq != expected_seq || prev_hash != previous_hash || hash != recomputed {
                return Ok(ChainReport { rows: count, first_broken: Some(seq) });
            }
            (expected_seq, previous_hash) = (seq + 1, hash);
        }
    }
    if head_seq != expected_seq - 1 || head_hash != previous_hash {
        // Rows after the last one present were removed (or the head was moved).
        return Ok(ChainReport { rows: count, first_broken: Some(expected_seq) });
    }
    Ok(ChainReport { rows: count, first_broken: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters_are_recorded_by_shape_never_by_value() {
        assert_eq!(
            filter_shape("name=Ann%20Smith&email=ann%40example.com&page=2&size=10"),
            "email=(given) name=(given) page=2 size=10"
        );
        assert_eq!(filter_shape(""), "");
        assert_eq!(filter_shape("page=1;DROP&other=x"), "page=1");
    }

    #[test]
    fn actions_follow_the_routes() {
        use axum::http::Method;
        assert_eq!(Action::of(&Method::GET, "/patients"), Some((Action::Search, None)));
        assert_eq!(Action::of(&Method::DELETE, "/patients/x"), Some((Action::Delete, Some("x"))));
        assert_eq!(Action::of(&Method::GET, "/patients/x/bill"), Some((Action::BillRead, Some("x"))));
        assert_eq!(Action::of(&Method::GET, "/audit"), None);
        assert_eq!(Action::of(&Method::HEAD, "/patients/x"), Some((Action::Read, Some("x"))));
        assert_eq!(Action::of(&Method::HEAD, "/patients"), Some((Action::Search, None)));
    }

    #[test]
    fn a_long_forwarding_chain_keeps_its_right_end() {
        assert_eq!(chain_tail("203.0.113.7, 10.0.0.1"), "203.0.113.7, 10.0.0.1");
        let spoofed = "198.51.100.1, ".repeat(40) + "203.0.113.7, 10.0.0.1";
        let kept = chain_tail(&spoofed);
        assert!(kept.chars().count() <= MAX_HEADER, "{kept}");
        assert!(kept.starts_with("…, 198.51.100.1, ") && kept.ends_with(", 203.0.113.7, 10.0.0.1"), "{kept}");
        // One entry longer than the room: its end.
        let one_entry: String = (0..300).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        assert_eq!(chain_tail(&one_entry), format!("…, {}", &one_entry[300 - 197..]));
        // A cut that falls just before an entry keeps that entry whole.
        let (x, y) = ("x".repeat(100), "y".repeat(95));
        let exact = format!("{}, {x}, {y}", "9".repeat(50));
        assert_eq!(chain_tail(&exact), format!("…, {x}, {y}"));
        let inside = format!("{}, 12{x}, {}", "9".repeat(50), &y[1..]);
        assert_eq!(chain_tail(&inside), format!("…, {}", &y[1..]), "a partial entry is not kept");
        // Text that is not ASCII is cut at a character.
        let wide = "é".repeat(300);
        assert_eq!(chain_tail(&wide), format!("…, {}", "é".repeat(197)));
    }
}
