//! Builds the gateway from its settings; `main` and the tests share this path.

use std::{future::Future, net::SocketAddr, sync::Arc};

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
    access::Service,
    jwks::KeyStore,
    settings::Auth,
    web::{self, Denied},
    Verifier,
};

use crate::{
    config::Settings,
    metrics::{self as gw_metrics, ALLOWED, FORBIDDEN, UNAUTHENTICATED, UPSTREAM_FAILURES},
    proxy::{Proxy, API_PREFIX, X_REQUEST_ID},
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
    /// The verifier's key store, kept fresh beside the server.
    auth: Auth,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = gw_metrics::registry();
        let auth = settings.oidc.start(metrics.clone()).await?;
        let parse = |u: &str| u.parse::<Uri>().with_context(|| format!("invalid backend URL {u}"));
        let gateway = Gateway {
            verifier: auth.verifier.clone(),
            keys: auth.keys.clone(),
            proxy: Proxy::new(Settings::ms(settings.upstream_connect_timeout_ms), Settings::ms(settings.upstream_timeout_ms)),
            patients: parse(&settings.patient_service_url)?,
            analytics: parse(&settings.analytics_service_url)?,
            metrics,
        };
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        Ok(Self { listener, gateway, auth })
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
        let refresh = self.auth.keep_fresh(stop.clone());
        let tasks: Vec<(&str, Task)> = vec![
            ("http-server", Box::pin(async move { server.await.context("HTTP server failed") })),
            ("jwks-refresh", Box::pin(refresh)),
        ];
        common::tasks::run_siblings(tasks, stop, shutdown).await
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
                Error::Denied(Denied::Unauthenticated(_)) => g.metrics.inc(UNAUTHENTICATED),
                Error::Denied(Denied::Forbidden(_)) => g.metrics.inc(FORBIDDEN),
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
    // `/api/x` is the services' `/x`: the same access table decides both.
    let path = req.uri().path().strip_prefix(API_PREFIX).filter(|p| p.starts_with('/')).ok_or(Denied::NotFound)?;
    let rule = web::rule(req.method(), path)?;
    let principal = web::authenticate(&g.verifier, req.headers()).await?;
    // Keycloak's subject is an opaque user id, not personal data: it makes requests auditable.
    tracing::Span::current().record("subject", principal.subject.as_str());
    web::permit(&rule, &principal)?;
    g.metrics.inc(ALLOWED);
    let base = match rule.service {
        Service::Patients => &g.patients,
        Service::Analytics => &g.analytics,
    };
    g.proxy.forward(base, req, client, request_id).await
}
