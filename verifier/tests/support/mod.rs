//! A real OIDC provider in miniature for the verifier's own tests and benchmark: an HTTP server
//! on a free loopback port serving discovery and a JWKS the test controls (keys from the
//! `openssl` CLI), counting fetches. Keycloak-specific behaviour is tested against Keycloak in
//! the gateway's suites; this fixture lets cache, rotation and cooldown rules run in milliseconds.

#![allow(dead_code)]

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc, Mutex,
};
use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use common::metrics::Registry;
use dev_stack::tokens::TestKey;
use serde_json::{json, Value};
use verifier::{
    cache::TokenCache,
    jwks::{JwksSettings, KeyStore},
    Algorithm, Verifier, VerifierSettings,
};

pub const AUDIENCE: &str = "patient-api";
/// The gateway's default clock-skew leeway: the cache must not stretch a token by it.
pub const LEEWAY_SECS: u64 = 30;

#[derive(Clone, Default)]
struct Published {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    /// The JWKS endpoint answers once it can read this; [`Provider::hold`] writes it.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// client_credentials grants served, and the lifetime (s) of the tokens handed out.
    grants: Arc<AtomicUsize>,
    /// Requests to the discovery and token endpoints, answered or not.
    realm_requests: Arc<AtomicUsize>,
    token_lifetime: Arc<AtomicUsize>,
}

/// The provider: its issuer URL, the keys it publishes, and how often its JWKS was fetched.
pub struct Provider {
    pub issuer: String,
    published: Published,
}

impl Provider {
    pub async fn start() -> Self {
        let published = Published::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        // The fields OpenID Connect Discovery 1.0 §3 requires.
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
                               "authorization_endpoint": format!("{issuer}/auth"), "token_endpoint": format!("{issuer}/token"),
                               "response_types_supported": ["code"], "subject_types_supported": ["public"],
                               "id_token_signing_alg_values_supported": ["RS256"]});
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move |State(p): State<Published>| async move { discover(p, discovery).await }),
            )
            .route("/jwks", get(jwks))
            .route("/token", axum::routing::post(token))
            .with_state(published.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { issuer, published }
    }

    /// Replaces the published key set.
    pub fn publish(&self, keys: &[(&TestKey, &str)]) {
        *self.published.keys.lock().unwrap() = keys.iter().map(|(k, kid)| k.jwk(kid)).collect();
    }

    /// While set, the discovery, JWKS and token endpoints answer 500.
    pub fn fail(&self, failing: bool) {
        self.published.failing.store(failing, Ordering::SeqCst);
    }

    /// Holds back the JWKS and token endpoints' answers (each request is still counted when it
    /// arrives) until the returned guard is dropped.
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.published.gate.clone().write_owned().await
    }

    /// Requests the discovery and token endpoints received so far, refused ones included.
    pub fn realm_requests(&self) -> usize {
        self.published.realm_requests.load(Ordering::SeqCst)
    }

    /// client_credentials grants served so far.
    pub fn grants(&self) -> usize {
        self.published.grants.load(Ordering::SeqCst)
    }

    /// Lifetime (`expires_in`) of the tokens the token endpoint hands out.
    pub fn token_lifetime(&self, secs: usize) {
        self.published.token_lifetime.store(secs, Ordering::SeqCst);
    }

    pub fn fetches(&self) -> usize {
        self.published.fetches.load(Ordering::SeqCst)
    }

    /// Claims a valid access token of this provider carries, expiring in `ttl_secs`.
    pub fn claims(&self, ttl_secs: u64) -> Value {
        json!({"iss": self.issuer, "aud": AUDIENCE, "typ": "Bearer", "sub": "user-1", "azp": "ms-api", "exp": now() + ttl_secs,
               "realm_access": {"roles": ["patients.read"]}})
    }

    /// A key store and verifier trusting this provider; `min_refetch` is the unknown-kid cooldown.
    pub fn verifier(&self, min_refetch: Duration, cache_capacity: u64) -> Fixture {
        let metrics = Registry::new();
        verifier::metrics::register(&metrics);
        let tokens = Arc::new(TokenCache::new(cache_capacity));
        let settings = JwksSettings {
            discovery_url: self.issuer.clone(),
            expected_issuers: vec![self.issuer.clone()],
            algorithms: vec![Algorithm::RS256],
            min_refetch,
            negative_ttl: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(3),
        };
        let keys = Arc::new(KeyStore::new(settings, tokens.clone(), metrics.clone()).unwrap());
        let verifier = Verifier::new(
            keys.clone(),
            VerifierSettings {
                algorithms: vec![Algorithm::RS256],
                issuers: vec![self.issuer.clone()],
                audience: AUDIENCE.into(),
                leeway_secs: LEEWAY_SECS,
                role_clients: vec![AUDIENCE.into()],
                max_token_bytes: 8 * 1024,
            },
            metrics.clone(),
        );
        Fixture { keys, verifier, tokens, metrics }
    }
}

/// What a test holds of the verifier under test.
pub struct Fixture {
    pub keys: Arc<KeyStore>,
    pub verifier: Verifier,
    pub tokens: Arc<TokenCache>,
    pub metrics: Arc<Registry>,
}

impl Fixture {
    pub fn counter(&self, series: &str) -> u64 {
        self.metrics.get(series)
    }
}

async fn jwks(State(p): State<Published>) -> impl IntoResponse {
    p.fetches.fetch_add(1, Ordering::SeqCst);
    drop(p.gate.read().await);
    if p.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys = p.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}

/// The token endpoint: client_credentials for `svc` / `svc-secret` only (client_secret_basic).
async fn token(State(p): State<Published>, headers: axum::http::HeaderMap, body: String) -> impl IntoResponse {
    use base64::Engine as _;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("svc:svc-secret"));
    p.realm_requests.fetch_add(1, Ordering::SeqCst);
    drop(p.gate.read().await);
    if p.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let authorised = headers.get("authorization").is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorised || !body.contains("grant_type=client_credentials") {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    let n = p.grants.fetch_add(1, Ordering::SeqCst) + 1;
    let lifetime = p.token_lifetime.load(Ordering::SeqCst).max(1);
    Json(json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": lifetime})).into_response()
}

async fn discover(p: Published, document: Value) -> axum::response::Response {
    p.realm_requests.fetch_add(1, Ordering::SeqCst);
    if p.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(document).into_response()
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
