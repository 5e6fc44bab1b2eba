//! Builds the gateway from its settings; `main` and the tests share this path.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{http::Uri, Router};
use common::{health::Readiness, shutdown::Drain, tasks::Task};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verifier::settings::Auth;

use crate::{
    config::Settings,
    docs::Docs,
    forwarded::TrustedProxies,
    limit::Limiter,
    metrics as gw_metrics,
    pipeline::{self, Gateway},
    proxy::Proxy,
};

/// How often buckets of clients gone quiet are forgotten.
const LIMITER_SWEEP: Duration = Duration::from_secs(60);

/// A bound, not yet serving gateway.
pub struct Application {
    listener: TcpListener,
    gateway: Arc<Gateway>,
    /// The verifier's key store, kept fresh beside the server.
    auth: Auth,
    /// `/api/openapi.json` and `/api/docs`.
    docs: Docs,
    cors: crate::cors::Cors,
    /// How the server stops: its keep-alive clients asked to leave first.
    drain: Drain,
    /// Server threads.
    threads: usize,
    /// Proxies whose forwarding headers are believed.
    trusted_proxies: TrustedProxies,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = gw_metrics::registry();
        let auth = settings.oidc.start(metrics.clone()).await?;
        let parse = |u: &str| u.parse::<Uri>().with_context(|| format!("invalid backend URL {u}"));
        let gateway = Arc::new(Gateway {
            verifier: auth.verifier.clone(),
            keys: auth.keys.clone(),
            limiter: Arc::new(Limiter::new(&settings.rate_limits)),
            proxy: Proxy::new(Settings::ms(settings.upstream_connect_timeout_ms), Settings::ms(settings.upstream_timeout_ms)),
            patients: parse(&settings.patient_service_url)?,
            analytics: parse(&settings.analytics_service_url)?,
            appointments: parse(&settings.appointment_service_url)?,
            metrics,
        });
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        let docs = Docs::new(
            gateway.proxy.clone(),
            [
                ("patient-service", &gateway.patients),
                ("analytics-service", &gateway.analytics),
                ("appointment-service", &gateway.appointments),
            ],
            &settings.oidc.issuer_url,
        )?;
        Ok(Self {
            listener,
            gateway,
            auth,
            docs,
            cors: settings.cors_allowed_origins.layer(),
            drain: Drain::new(&settings.drain),
            threads: settings.threads(),
            trusted_proxies: settings.trusted_proxies,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves until `shutdown` resolves; the JWKS refresh runs beside the server.
    ///
    /// The server runs on [`Settings::server_threads`] threads ([`crate::threads`]), each with
    /// its own router and backend connection pool.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), threads = self.threads, "gateway listening");
        let stop = CancellationToken::new();
        // Ready once at least one verification key is loaded.
        let keys = self.gateway.keys.clone();
        let readiness = Readiness::default().check("keys", move || std::future::ready(!keys.is_empty()));
        // The operational routes are the shared ones; the API is the pipeline, which sets its own
        // request id and counts its own outcomes (no per-request layer on the proxy's hot path).
        let routers = (0..self.threads)
            .map(|_| {
                let gateway = Arc::new(self.gateway.with_own_pool());
                let router = Router::new()
                    .fallback(pipeline::handle)
                    .with_state(gateway.clone())
                    .merge(self.docs.with_proxy(gateway.proxy.clone()).routes())
                    .merge(common::health::routes(readiness.clone()))
                    .merge(common::metrics::routes(gateway.metrics.clone()))
                    // Outermost: a preflight is answered before any stage looks at it.
                    .layer(self.cors.clone());
                self.drain.layer(router)
            })
            .collect();
        let header_read_timeout = self.drain.header_read_timeout();
        let stopping = self.drain.clone().then_stop(stop.clone());
        let server = crate::threads::serve(self.listener, routers, header_read_timeout, self.trusted_proxies, stopping);
        let refresh = self.auth.keep_fresh(stop.clone());
        let tasks: Vec<(&str, Task)> = vec![
            ("http-server", Box::pin(server)),
            ("jwks-refresh", Box::pin(refresh)),
            ("rate-limit-sweep", Box::pin(sweep(self.gateway.limiter.clone(), stop.clone()))),
        ];
        common::tasks::run_siblings(tasks, stop, shutdown).await
    }
}

/// Keeps the limiter's memory to the clients seen recently.
async fn sweep(limiter: Arc<Limiter>, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(LIMITER_SWEEP) => limiter.forget_idle(),
        }
    }
}
