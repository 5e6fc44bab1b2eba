//! The REST API: commands (write side) and queries (read side), every route behind the shared
//! caller check with the gateway's rules (SPEC §10).

mod commands;
pub mod openapi;
mod queries;

use std::{sync::Arc, time::Duration};

use axum::{
    http::{HeaderMap, HeaderName, HeaderValue},
    middleware, Router,
};
use sqlx::PgPool;
use utoipa::OpenApi;
use verifier::Verifier;

use crate::{projection::Token, Error};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub verifier: Arc<Verifier>,
    /// Longest appointment, in minutes.
    pub max_minutes: i64,
    /// How long before its start an appointment takes a check-in.
    pub check_in_opens: chrono::Duration,
    /// Longest a query waits for the projection to reach a client's consistency token.
    pub wait_max: Duration,
    /// Whose days a schedule shows unless the query names a time zone.
    pub zone: common::zone::Zone,
}

/// A command's answer names the change, so a query can wait for it: `<appointment id>:<version>`.
pub static CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("x-consistency-token");
/// A query waits until the projection holds this token's change.
pub static WAIT_FOR: HeaderName = HeaderName::from_static("x-wait-for");
/// Events the projection has applied so far (grows with every applied change).
pub static PROJECTION_POSITION: HeaderName = HeaderName::from_static("x-projection-position");
/// When the newest change the projection applied happened (RFC 3339).
pub static PROJECTION_LAST_EVENT_AT: HeaderName = HeaderName::from_static("x-projection-last-event-at");
pub static TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");

/// The API routes (health and middleware are added by `startup`).
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(commands::routes())
        .merge(queries::routes())
        .route_layer(middleware::from_fn_with_state(state.verifier.clone(), verifier::web::require_caller))
        // The API's description is public, like the gateway's copy of it.
        .merge(common::openapi::routes(openapi::ApiDoc::openapi()))
        .with_state(state)
}

/// The `{id}` path segment as a UUID.
fn appointment_id(raw: &str) -> Result<uuid::Uuid, Error> {
    common::extract::canonical_uuid(raw)
        .ok_or_else(|| Error::BadRequest("appointment id must be a UUID like 123e4567-e89b-12d3-a456-426614174000".into()))
}

/// `ETag` of a version (see [`common::conditional`]).
fn etag(version: i64) -> HeaderValue {
    common::conditional::etag(version)
}

/// The versions `If-Match` accepts (see [`common::conditional`]); malformed is a 400.
fn if_match(headers: &HeaderMap) -> Result<Option<Vec<i64>>, Error> {
    common::conditional::if_match(headers).map_err(|message| Error::BadRequest(message.into()))
}

/// The consistency token of `X-Wait-For`, if the client sent one.
fn wait_for(headers: &HeaderMap) -> Result<Option<Token>, Error> {
    let Some(raw) = headers.get(&WAIT_FOR) else { return Ok(None) };
    raw.to_str()
        .ok()
        .and_then(Token::parse)
        .map(Some)
        .ok_or_else(|| Error::BadRequest("X-Wait-For must be a consistency token like <appointment id>:<version>".into()))
}
