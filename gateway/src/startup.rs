//! Builds the gateway from its settings; `main` and the tests share this path.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use common::{metrics::Registry, tasks::Task};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verifier::{
    cache::TokenCache,
    jwks::{JwksSettings, KeyStore},
    Algorithm, Verifier, VerifierSettings,
};

use crate::{
    config::Settings,
    metrics::{self as gw_metrics, ALLOWED, FORBIDDEN, UNAUTHENTICATED, UPSTREAM_FAILURES},
    proxy::{Proxy, X_REQUEST_ID},
    rules::{self, Backend, Match},
    Error,
};

/// Everything a request needs.
#[derive(Clone)]
struct Gateway {
    verifier: Arc<Verifier>,
    keys: Arc<KeyStore>,
    proxy: Proxy,
    patients: Uri,
    analytics: Uri,
    metrics: Arc<Registry>,
}

/// A bound, not yet serving gateway.
pub struct Application {
    listener: TcpListener,
    gateway: Gateway,
    refresh_every: Duration,
    /// Whether the start-up JWKS fetch succeeded (if not, the refresh retries within a second).
    warm: bool,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = gw_metrics::registry();
        let algorithms = vec![Algorithm::RS256];
        let issuers = settings.accepted_issuers();
        let tokens = Arc::new(TokenCache::new(settings.token_cache_capacity));
        let keys = Arc::new(KeyStore::new(
            JwksSettings {
                discovery_url: settings.discovery_url.clone().unwrap_or_else(|| settings.issuer_url.clone()),
                expected_issuers: issuers.clone(),
                algorithms: algorithms.clone(),
                min_refetch: Settings::ms(settings.jwks_min_refetch_ms),
                negative_ttl: Duration::from_secs(settings.jwks_negative_ttl_secs),
                fetch_timeout: Settings::ms(settings.jwks_fetch_timeout_ms),
            },
            tokens,
            metrics.clone(),
        )?);
        // Warm the cache; Keycloak being down is not fatal (the first token retries, the
        // background refresh keeps trying, quickly at first).
        let warm = keys.refresh().await.is_ok();
        let verifier = Arc::new(Verifier::new(
            keys.clone(),
            VerifierSettings {
                algorithms,
                issuers,
                audience: settings.audience.clone(),
                leeway_secs: settings.leeway_secs,
                role_clients: settings.role_clients.clone(),
                max_token_bytes: settings.max_token_bytes,
            },
            metrics.clone(),
        ));
        let parse = |u: &str| u.parse::<Uri>().with_context(|| format!("invalid backend URL {u}"));
        let gateway = Gateway {
            verifier,
            keys,
            proxy: Proxy::new(Settings::ms(settings.upstream_connect_timeout_ms), Settings::ms(settings.upstream_timeout_ms)),
            patients: parse(&settings.patient_service_url)?,
            analytics: parse(&settings.analytics_service_url)?,
            metrics,
        };
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        Ok(Self { listener, gateway, refresh_every: Duration::from_secs(settings.jwks_refresh_secs.max(1)), warm })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves until `shutdown` resolves; the JWKS refresh runs beside the server.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "gateway listening");
        let stop = CancellationToken::new();
        let router = Router::new()
            .route("/health/live", get(|| async { axum::Json(serde_json::json!({"status": "UP"})) }))
            .route("/health/ready", get(ready))
            .fallback(handle)
            .with_state(self.gateway.clone())
            .merge(common::metrics::routes(self.gateway.metrics.clone()));
        let server = axum::serve(self.listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let keys = self.gateway.keys.clone();
        let refresh = refresh_loop(keys, self.refresh_every, self.warm, stop.clone());
        let tasks: Vec<(&str, Task)> = vec![
            ("http-server", Box::pin(async move { server.await.context("HTTP server failed") })),
            ("jwks-refresh", Box::pin(refresh)),
        ];
        common::tasks::run_siblings(tasks, stop, shutdown).await
    }
}

/// First retry after a failed fetch; doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(15);

/// Refreshes keys periodically. After a failure (the warm-up included: a gateway started before
/// Keycloak) it retries from one second on, backing off, never dropping cached keys.
async fn refresh_loop(keys: Arc<KeyStore>, every: Duration, warm: bool, stop: CancellationToken) -> anyhow::Result<()> {
    let mut wait = if warm { every } else { FIRST_RETRY };
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        wait = match keys.refresh().await {
            Ok(_) => every,
            Err(_) if wait >= every => FIRST_RETRY.min(every),
            Err(_) => (wait * 2).min(MAX_RETRY).min(every),
        };
    }
}

/// Ready once the gateway holds at least one verification key.
async fn ready(State(g): State<Gateway>) -> Response {
    if g.keys.is_empty() {
        common::problem::Problem::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "no signing keys loaded yet").into_response()
    } else {
        axum::Json(serde_json::json!({"status": "UP", "keys": g.keys.len()})).into_response()
    }
}

/// Route → authenticate → authorise → proxy. Anything rejected stops here.
#[tracing::instrument(skip_all, fields(method = %req.method(), request_id, subject))]
async fn handle(State(g): State<Gateway>, ConnectInfo(client): ConnectInfo<SocketAddr>, req: Request) -> Response {
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| v.len() <= 128)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("uuid is a header value"));
    tracing::Span::current().record("request_id", request_id.to_str().unwrap_or_default());
    let mut response = match route_and_forward(&g, client, req, &request_id).await {
        Ok(response) => response,
        Err(err) => {
            match &err {
                Error::Unauthenticated(_) => g.metrics.inc(UNAUTHENTICATED),
                Error::InsufficientScope(_) => g.metrics.inc(FORBIDDEN),
                Error::UpstreamUnavailable | Error::UpstreamTimeout | Error::UpstreamFailed(_) => {
                    g.metrics.inc(UPSTREAM_FAILURES)
                }
                _ => {}
            }
            tracing::info!(outcome = %err, "request rejected");
            err.into_response()
        }
    };
    response.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    response
}

async fn route_and_forward(g: &Gateway, client: SocketAddr, req: Request, request_id: &HeaderValue) -> Result<Response, Error> {
    let route = match rules::match_route(req.method(), req.uri().path()) {
        Match::Route(route) => route,
        Match::MethodNotAllowed => return Err(Error::MethodNotAllowed),
        Match::NotFound => return Err(Error::NotFound),
    };
    let principal = g.verifier.verify_headers(req.headers()).await?;
    // Keycloak's subject is an opaque user id, not personal data: it makes requests auditable.
    tracing::Span::current().record("subject", principal.subject.as_str());
    let missing: Vec<&str> = route.roles.iter().copied().filter(|r| !principal.roles.contains(*r)).collect();
    if !missing.is_empty() {
        return Err(Error::InsufficientScope(missing.join(" ")));
    }
    g.metrics.inc(ALLOWED);
    let base = match route.backend {
        Backend::Patients => &g.patients,
        Backend::Analytics => &g.analytics,
    };
    g.proxy.forward(base, req, client, request_id).await
}
