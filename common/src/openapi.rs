//! What every service's OpenAPI document shares: the bearer-token security scheme, the problem
//! body, the responses any operation can give (401, 403 from the service's own check, 500, 503; 413
//! and 415 where it takes a JSON body) and the `/openapi.json` route, rendered once.

use std::sync::Arc;

use axum::{http::header, routing::get, Router};
use utoipa::{
    openapi::{
        path::Operation,
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
        ComponentsBuilder, ContentBuilder, OpenApi, Ref, ResponseBuilder,
    },
    Modify, PartialSchema, ToSchema,
};

use crate::problem::{Problem, CONTENT_TYPE};

/// The security scheme name every operation requires.
pub const BEARER: &str = "bearerAuth";

/// A problem response described as `application/problem+json`.
pub fn problem_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(CONTENT_TYPE, ContentBuilder::new().schema(Some(Ref::from_schema_name(Problem::name()))).build())
        .build()
}

/// Adds the shared parts to a service's generated document (`#[openapi(modifiers(&Shared))]`).
pub struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.take().unwrap_or_else(|| ComponentsBuilder::new().build());
        let mut components = components;
        components.schemas.insert(Problem::name().into(), Problem::schema());
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A Keycloak access token of the platform's realm"))
                    .build(),
            ),
        );
        doc.components = Some(components);
        doc.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
                add_common_responses(op);
            }
        }
    }
}

fn add_common_responses(op: &mut Operation) {
    for (status, description) in [
        ("401", "No valid access token (RFC 6750 challenge in WWW-Authenticate)"),
        ("403", "The token lacks a role this operation needs"),
        ("500", "An internal error; nothing is revealed"),
        (
            "503",
            "Temporarily unavailable: no database connection in time, or past the service's time limit; retry after Retry-After",
        ),
    ] {
        op.responses.responses.entry(status.into()).or_insert_with(|| problem_response(description).into());
    }
    // What the shared body extractor (`crate::extract::AppJson`) answers for any JSON body.
    if op.request_body.is_some() {
        for (status, description) in [
            ("413", "The body is larger than the limit"),
            ("415", "The body is not declared as JSON (Content-Type: application/json)"),
        ] {
            op.responses.responses.entry(status.into()).or_insert_with(|| problem_response(description).into());
        }
    }
}

/// `GET /openapi.json`: the document, serialised once.
pub fn routes<S: Clone + Send + Sync + 'static>(doc: OpenApi) -> Router<S> {
    let json: Arc<str> = doc.to_json().expect("an OpenAPI document serialises").into();
    Router::new().route(
        "/openapi.json",
        get(move || {
            let json = json.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], json.to_string()) }
        }),
    )
}
