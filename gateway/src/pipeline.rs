//! The gateway's request pipeline, one named stage after the other:
//! route → authenticate → authorise → limit → forward. A stage that refuses ends the request
//! there; nothing refused ever reaches a backend.

use std::sync::Arc;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Uri},
    response::{IntoResponse, Response},
};
use common::metrics::Registry;
use tracing::Instrument;
use verifier::{
    access::{Rule, Service},
    jwks::KeyStore,
    web::{self, Denied},
    Principal, Verifier,
};

use crate::{
    forwarded::Peer,
    limit::{Decision, Limiter},
    metrics::{ALLOWED, FORBIDDEN, NOT_ROUTED, RATE_LIMITED, UNAUTHENTICATED, UPSTREAM_FAILURES},
    proxy::{new_traceparent, Proxy, API_PREFIX, TRACEPARENT, TRACESTATE, X_REQUEST_ID},
    Error,
};

/// Everything a request needs, built once at start (shared by reference: a request costs one
/// reference count, not a copy of each part).
#[derive(Clone)]
pub struct Gateway {
    pub verifier: Arc<Verifier>,
    pub keys: Arc<KeyStore>,
    pub limiter: Arc<Limiter>,
    pub proxy: Proxy,
    pub patients: Uri,
    pub analytics: Uri,
    pub appointments: Uri,
    pub metrics: Arc<Registry>,
}

impl Gateway {
    /// The same gateway with a backend connection pool of its own (one per server thread).
    pub fn with_own_pool(&self) -> Self {
        Self { proxy: self.proxy.own_pool(), ..self.clone() }
    }
}

/// The handler of every API request, in a span that continues the caller's trace.
pub async fn handle(State(g): State<Arc<Gateway>>, ConnectInfo(client): ConnectInfo<Peer>, mut req: Request) -> Response {
    let request_id = req.headers().get(&X_REQUEST_ID).filter(|v| v.len() <= 128).cloned().unwrap_or_else(new_request_id);
    let span = tracing::info_span!("gateway", method = %req.method(), request_id = request_id.to_str().unwrap_or_default(),
        trace_id = tracing::field::Empty, subject = tracing::field::Empty);
    // A trace starts here unless the caller continues a valid one (W3C: an invalid one restarts,
    // its trace state dropped).
    let headers = req.headers_mut();
    if common::telemetry::trace_id(headers).is_some() {
        common::telemetry::continue_trace(&span, headers);
    } else {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
    // The backends continue this span when spans are exported; otherwise the caller's trace, or
    // a fresh one.
    if common::telemetry::exporting() {
        span.in_scope(|| common::telemetry::inject(headers));
    }
    if common::telemetry::trace_id(headers).is_none() {
        headers.insert(TRACEPARENT.clone(), new_traceparent());
    }
    span.record("trace_id", common::telemetry::trace_id(headers).unwrap_or_default());
    handle_in_span(g, client, req, request_id).instrument(span).await
}

async fn handle_in_span(g: Arc<Gateway>, client: Peer, req: Request, request_id: HeaderValue) -> Response {
    let mut response = match run(&g, client, req, &request_id).await {
        Ok(response) => response,
        Err(err) => {
            g.metrics.inc(match &err {
                Error::Denied(Denied::Unauthenticated(_)) => UNAUTHENTICATED,
                Error::Denied(Denied::Forbidden(_)) => FORBIDDEN,
                Error::RateLimited(_) => RATE_LIMITED,
                Error::UpstreamUnavailable | Error::UpstreamTimeout | Error::UpstreamFailed(_) => UPSTREAM_FAILURES,
                Error::Denied(_) => NOT_ROUTED,
            });
            tracing::info!(outcome = %err, "request rejected");
            err.into_response()
        }
    };
    response.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    response
}

async fn run(g: &Gateway, client: Peer, req: Request, request_id: &HeaderValue) -> Result<Response, Error> {
    let rule = route(&req)?;
    let principal = authenticate(g, req.headers()).await?;
    authorise(&rule, &principal)?;
    let quota = limit(g, &principal)?;
    g.metrics.inc(ALLOWED);
    let mut response = forward(g, &rule, req, client, request_id).await?;
    if let Some(quota) = quota {
        quota.apply(response.headers_mut());
    }
    Ok(response)
}

/// A fresh request id: a random UUID, written without an intermediate string.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a header value")
}

/// `/api/x` is the services' `/x`: the same access table decides both.
fn route(req: &Request) -> Result<Rule, Error> {
    let path = req.uri().path().strip_prefix(API_PREFIX).filter(|p| p.starts_with('/')).ok_or(Denied::NotFound)?;
    Ok(web::rule(req.method(), path)?)
}

/// Only the head is looked at (the body is not `Sync` and need not be).
async fn authenticate(g: &Gateway, headers: &HeaderMap) -> Result<Arc<Principal>, Error> {
    let principal = web::authenticate(&g.verifier, headers).await?;
    // Keycloak's subject is an opaque user id, not personal data: it makes requests auditable.
    tracing::Span::current().record("subject", principal.subject.as_str());
    Ok(principal)
}

fn authorise(rule: &Rule, principal: &Principal) -> Result<(), Error> {
    Ok(web::permit(rule, principal)?)
}

/// One request from the caller's bucket; the quota headers go on the backend's answer and on a 429.
fn limit(g: &Gateway, principal: &Principal) -> Result<Option<Decision>, Error> {
    match g.limiter.check(principal) {
        Some(decision) if !decision.allowed => Err(Error::RateLimited(decision)),
        quota => Ok(quota),
    }
}

async fn forward(g: &Gateway, rule: &Rule, req: Request, client: Peer, request_id: &HeaderValue) -> Result<Response, Error> {
    let base = match rule.service {
        Service::Patients => &g.patients,
        Service::Analytics => &g.analytics,
        Service::Appointments => &g.appointments,
    };
    g.proxy.forward(base, req, client, request_id).await
}
