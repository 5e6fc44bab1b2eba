//! The verifier on HTTP: RFC 6750 challenges with RFC 9457 problem bodies, and the axum
//! middleware a service puts in front of its API so that it checks every caller itself
//! (SPEC §10) with the gateway's own rules.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use common::problem::Problem;

use crate::{
    access::{self, Access, Rule},
    AuthError, Principal, Verifier,
};

/// The `realm` of our `WWW-Authenticate` challenges.
pub const REALM: &str = "patient-platform";

/// `Retry-After` of a 503 while the realm's keys cannot be fetched.
const RETRY_KEYS_AFTER_SECS: u64 = 2;

/// Why a request is refused before it reaches a handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No acceptable bearer credentials (the reason names the check only).
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// Authenticated, but these roles are missing.
    #[error("the access token lacks the role(s) {}", .0.join(" "))]
    Forbidden(Vec<&'static str>),
    #[error("no route for this path")]
    NotFound,
    /// The path exists; the methods it takes (the `Allow` header).
    #[error("method not allowed for this path")]
    MethodNotAllowed(String),
}

impl Denied {
    pub fn status(&self) -> StatusCode {
        match self {
            Denied::Unauthenticated(AuthError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            Denied::Unauthenticated(AuthError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Denied::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Denied::Forbidden(_) => StatusCode::FORBIDDEN,
            Denied::NotFound => StatusCode::NOT_FOUND,
            Denied::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn challenge(&self) -> Option<String> {
        Some(match self {
            Denied::Unauthenticated(AuthError::MissingToken) => format!("Bearer realm=\"{REALM}\""),
            Denied::Unauthenticated(AuthError::InvalidToken(reason)) => {
                format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{reason}\"")
            }
            Denied::Unauthenticated(AuthError::InvalidRequest(reason)) => {
                format!("Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{reason}\"")
            }
            Denied::Forbidden(roles) => format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"missing role\", scope=\"{}\"",
                roles.join(" ")
            ),
            Denied::Unauthenticated(AuthError::KeysUnavailable) | Denied::NotFound | Denied::MethodNotAllowed(_) => return None,
        })
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let mut problem = Problem::new(self.status(), self.to_string());
        if matches!(self, Denied::Unauthenticated(AuthError::KeysUnavailable)) {
            problem = problem.with_retry_after(RETRY_KEYS_AFTER_SECS);
        }
        let mut response = problem.into_response();
        if let Some(value) = self.challenge().and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        if let Denied::MethodNotAllowed(allow) = &self {
            if let Ok(value) = HeaderValue::from_str(allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
        }
        response
    }
}

/// The rule of a service path (see [`access::rule_for`]).
pub fn rule(method: &Method, path: &str) -> Result<Rule, Denied> {
    match access::rule_for(method, path) {
        Access::Rule(rule) => Ok(rule),
        Access::MethodNotAllowed => Err(Denied::MethodNotAllowed(access::allowed_methods(path))),
        Access::NotFound => Err(Denied::NotFound),
    }
}

/// The verified caller of a request.
pub async fn authenticate(verifier: &Verifier, headers: &HeaderMap) -> Result<Arc<Principal>, Denied> {
    Ok(verifier.verify_headers(headers).await?)
}

/// Whether `principal` holds every role `rule` requires.
pub fn permit(rule: &Rule, principal: &Principal) -> Result<(), Denied> {
    let missing: Vec<&'static str> = rule.roles.iter().copied().filter(|r| !principal.roles.contains(*r)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Denied::Forbidden(missing))
    }
}

/// The verified caller, for handlers: `Extension<Caller>`.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

/// axum middleware (`middleware::from_fn_with_state(verifier, require_caller)`): route rule,
/// token, roles, exactly as the gateway decides them; the handler then finds [`Caller`] in the
/// request's extensions.
pub async fn require_caller(State(verifier): State<Arc<Verifier>>, req: Request, next: Next) -> Response {
    // Only the head is looked at (the body is not `Sync` and need not be).
    let (mut head, body) = req.into_parts();
    match check(&verifier, &head).await {
        Ok(principal) => {
            head.extensions.insert(Caller(principal));
            next.run(Request::from_parts(head, body)).await
        }
        Err(denied) => {
            tracing::info!(outcome = %denied, "request refused");
            denied.into_response()
        }
    }
}

/// Route rule, token, roles: the caller of a request head, or why it is refused.
pub async fn check(verifier: &Verifier, head: &Parts) -> Result<Arc<Principal>, Denied> {
    let rule = rule(&head.method, head.uri.path())?;
    let principal = authenticate(verifier, &head.headers).await?;
    permit(&rule, &principal)?;
    Ok(principal)
}
