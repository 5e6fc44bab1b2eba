//! The platform's API description at the gateway (SPEC §13): `/api/openapi.json` merges the
//! documents the services generate from their code, with the gateway's own answers added to
//! every operation and Keycloak's flows as security schemes; `/api/docs` is Swagger UI (assets
//! from the `utoipa-swagger-ui` crate) with "Authorize" wired to the realm. Both are public, so
//! the services are asked at most once per [`FRESH_FOR`] whatever the traffic (one refresh at a
//! time, run to its end even if its caller leaves; the services at once, within
//! [`FETCH_DEADLINE`]); only a complete document is served
//! — the last one while a service cannot be asked, 503 before there was any.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode, Uri},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};
use common::problem::Problem;
use serde_json::{json, Map, Value};
use tokio::sync::{Mutex, OwnedMutexGuard};
use utoipa_swagger_ui::{oauth, Config};

use crate::proxy::Proxy;

/// How long a merged document is served before the services are asked again.
const FRESH_FOR: Duration = Duration::from_secs(30);

/// The most one refresh may take.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);

/// The public client people sign in with ("Authorize" in the UI).
const UI_CLIENT: &str = "patient-web";

/// Answers the gateway itself gives on any proxied operation.
const GATEWAY_ANSWERS: [(&str, &str); 4] = [
    ("429", "This client's rate limit is spent (Retry-After, RateLimit, RateLimit-Policy)"),
    ("502", "The service answered unexpectedly"),
    ("503", "The service is unavailable (Retry-After)"),
    ("504", "The service did not answer in time"),
];

/// The last complete document, and when the services were last asked.
#[derive(Default)]
struct Cache {
    doc: Option<Arc<str>>,
    asked: Option<Instant>,
}

#[derive(Clone)]
pub struct Docs {
    proxy: Proxy,
    /// Each service's `/openapi.json`.
    sources: Arc<[(&'static str, Uri)]>,
    /// The realm as browsers reach it, for the OAuth flows.
    issuer: Arc<str>,
    /// Held across a refresh: concurrent requests wait for it instead of asking again.
    cache: Arc<Mutex<Cache>>,
    ui: Arc<Config<'static>>,
}

impl Docs {
    pub fn new(proxy: Proxy, services: [(&'static str, &Uri); 3], issuer: &str) -> anyhow::Result<Self> {
        let sources = services
            .iter()
            .map(|(name, base)| {
                let mut parts = (*base).clone().into_parts();
                parts.path_and_query = Some("/openapi.json".parse()?);
                Ok((*name, Uri::from_parts(parts)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sign_in = oauth::Config::new().client_id(UI_CLIENT).use_pkce_with_authorization_code_grant(true);
        let ui = Config::with_oauth_config(["/api/openapi.json"], sign_in).try_it_out_enabled(true);
        Ok(Self { proxy, sources: sources.into(), issuer: issuer.into(), cache: Arc::default(), ui: Arc::new(ui) })
    }

    /// The same document source (and cache), fetched through `proxy`.
    pub fn with_proxy(&self, proxy: Proxy) -> Self {
        Self { proxy, ..self.clone() }
    }

    pub fn routes(self) -> Router {
        Router::new()
            .route("/api/openapi.json", get(openapi))
            .route("/api/docs", get(|| async { Redirect::permanent("/api/docs/") }))
            .route("/api/docs/", get(|State(d): State<Docs>| async move { ui_file(&d, "") }))
            .route("/api/docs/{*file}", get(|State(d): State<Docs>, Path(file): Path<String>| async move { ui_file(&d, &file) }))
            .with_state(self)
    }

    /// The merged document, `None` until every service has described itself once.
    async fn merged(&self) -> Option<Arc<str>> {
        let cache = self.cache.clone().lock_owned().await;
        if cache.asked.is_some_and(|at| at.elapsed() < FRESH_FOR) {
            return cache.doc.clone();
        }
        // The refresh runs to its end, holding the cache, even if this caller goes away: the
        // callers behind it find it done, and the services are still asked once per period.
        let docs = self.clone();
        tokio::spawn(async move { docs.refresh(cache).await }).await.unwrap_or_default()
    }

    /// Asks every service for its document and merges them; the last complete document stays
    /// if one cannot answer.
    async fn refresh(&self, mut cache: OwnedMutexGuard<Cache>) -> Option<Arc<str>> {
        let fetches = self.sources.iter().map(|(name, uri)| async move { (*name, self.proxy.fetch_json(uri.clone()).await) });
        let results = tokio::time::timeout(FETCH_DEADLINE, futures::future::join_all(fetches)).await;
        cache.asked = Some(Instant::now());
        let mut parts = Vec::new();
        for (name, result) in results.unwrap_or_default() {
            match result {
                Ok(doc) => parts.push(doc),
                Err(err) => tracing::warn!(service = name, error = %format!("{err:#}"), "API description unavailable"),
            }
        }
        if parts.len() == self.sources.len() {
            cache.doc = Some(merge(&parts, &self.issuer).to_string().into());
        } else {
            tracing::warn!("serving the last complete API description");
        }
        cache.doc.clone()
    }
}

async fn openapi(State(docs): State<Docs>) -> Response {
    match docs.merged().await {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response(),
        None => {
            let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the services have not described their API yet")
                .with_retry_after(FRESH_FOR.as_secs());
            ([(header::CACHE_CONTROL, "no-store")], problem).into_response()
        }
    }
}

fn ui_file(docs: &Docs, file: &str) -> Response {
    match utoipa_swagger_ui::serve(file, docs.ui.clone()) {
        Ok(Some(file)) => ([(header::CONTENT_TYPE, file.content_type)], file.bytes.into_owned()).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            tracing::error!(error = %err, "Swagger UI file failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// One document of the services' paths (served under `/api`), their schemas and tags, the
/// gateway's own answers on every operation, and Keycloak as the way to get a token.
fn merge(parts: &[Value], issuer: &str) -> Value {
    let (mut paths, mut schemas, mut tags) = (Map::new(), Map::new(), Vec::new());
    for part in parts {
        for (path, item) in part["paths"].as_object().into_iter().flatten() {
            let mut item = item.clone();
            for op in item.as_object_mut().into_iter().flat_map(|i| i.values_mut()) {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
                for (status, description) in GATEWAY_ANSWERS {
                    responses.entry(status).or_insert_with(|| problem(description));
                }
            }
            paths.insert(path.clone(), item);
        }
        if let Some(s) = part["components"]["schemas"].as_object() {
            schemas.extend(s.clone());
        }
        tags.extend(part["tags"].as_array().into_iter().flatten().cloned());
    }
    let oidc = format!("{}/protocol/openid-connect", issuer.trim_end_matches('/'));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Patient platform API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every call needs a Keycloak access token of the platform's realm. \
                Services: patients (and their billing accounts and audit trail), analytics, appointments."
        },
        "servers": [{"url": "/api"}],
        "paths": paths,
        "tags": tags,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A Keycloak access token"},
                "keycloak": {"type": "oauth2", "description": "Keycloak: a service's client credentials, or a person's sign-in (PKCE)",
                    "flows": {
                        "clientCredentials": {"tokenUrl": format!("{oidc}/token"), "scopes": {}},
                        "authorizationCode": {"authorizationUrl": format!("{oidc}/auth"), "tokenUrl": format!("{oidc}/token"), "scopes": {}}
                    }}
            }
        },
        "security": [{"bearerAuth": []}, {"keycloak": []}]
    })
}

fn problem(description: &str) -> Value {
    json!({"description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_refresh_whose_caller_went_away_completes_for_the_callers_behind_it() {
        // Services that answer once released, counting what they are asked.
        let (release, released) = tokio::sync::watch::channel(false);
        let asked = Arc::new(AtomicUsize::new(0));
        let described = {
            let asked = asked.clone();
            move || async move {
                asked.fetch_add(1, Ordering::SeqCst);
                let _ = released.clone().wait_for(|r| *r).await;
                ([(header::CONTENT_TYPE, "application/json")], r#"{"paths": {"/things": {"get": {"responses": {}}}}}"#)
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: Uri = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        let services = axum::serve(listener, Router::new().route("/openapi.json", get(described)));
        tokio::spawn(async move { services.await });
        let proxy = Proxy::new(Duration::from_secs(1), Duration::from_secs(10));
        let docs = Docs::new(proxy, [("a", &base), ("b", &base), ("c", &base)], "http://kc/realms/r").unwrap();

        assert!(tokio::time::timeout(Duration::from_millis(300), docs.merged()).await.is_err(), "the first caller gives up");
        release.send(true).unwrap();
        let doc = tokio::time::timeout(Duration::from_secs(5), docs.merged()).await.expect("answered");
        assert!(doc.expect("the refresh the first caller started").contains("/things"));
        assert_eq!(asked.load(Ordering::SeqCst), 3, "each service asked once");
    }

    #[test]
    fn paths_schemas_and_tags_of_every_service_with_the_gateways_answers() {
        let patients = json!({"paths": {"/patients": {"get": {"responses": {"200": {}, "400": {"description": "own"}}}}},
            "components": {"schemas": {"Patient": {}, "Problem": {}}}, "tags": [{"name": "patients"}]});
        let analytics = json!({"paths": {"/analytics/summary": {"get": {"responses": {"200": {}}}}},
            "components": {"schemas": {"Summary": {}, "Problem": {}}}, "tags": [{"name": "analytics"}]});
        let doc = merge(&[patients, analytics], "http://kc/realms/r/");
        assert_eq!(doc["servers"][0]["url"], "/api");
        assert_eq!(doc["paths"].as_object().unwrap().len(), 2);
        let responses = &doc["paths"]["/patients"]["get"]["responses"];
        for status in ["200", "400", "429", "502", "503", "504"] {
            assert!(responses[status].is_object(), "{status}");
        }
        assert_eq!(responses["400"]["description"], "own", "a service's own answer is kept");
        assert_eq!(doc["components"]["schemas"].as_object().unwrap().len(), 3);
        assert_eq!(doc["tags"].as_array().unwrap().len(), 2);
        assert_eq!(
            doc["components"]["securitySchemes"]["keycloak"]["flows"]["clientCredentials"]["tokenUrl"],
            "http://kc/realms/r/protocol/openid-connect/token"
        );
    }
}
