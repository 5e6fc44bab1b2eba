//! Builds patient-service from its settings; `main` and the tests share this path.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use axum::Router;
use common::{edge::Edge, health::Readiness, metrics::Registry, shutdown::Drain, tasks::Task};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verifier::{client::ServiceToken, settings::Auth};

use crate::{
    billing::BillingClient,
    config::Settings,
    demo,
    routes::{self, AppState},
    MIGRATOR,
};

/// A bound, migrated, not yet serving patient-service.
pub struct Application {
    listener: TcpListener,
    router: Router,
    drain: Drain,
    pool: sqlx::PgPool,
    relay: Option<common::outbox::Relay>,
    auth: Auth,
    idempotency_sweep: std::time::Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = settings.db.connect_and_migrate_as(&MIGRATOR, Some(crate::RUNTIME_ROLE)).await?;
        if settings.seed_demo_data {
            demo::seed(&pool).await?;
        }
        let metrics = Registry::new();
        verifier::metrics::register(&metrics);
        let auth = settings.oidc.start(metrics.clone()).await?;
        let token = Arc::new(ServiceToken::new(settings.oidc.clone(), settings.client.clone())?);
        token.prefetch();
        let billing = BillingClient::new(
            &settings.billing_grpc_url,
            settings.billing_connect_timeout(),
            settings.billing_timeout(),
            token,
            &settings.billing_resilience,
            metrics.clone(),
        )?;
        let state = AppState { db: pool.clone(), billing, verifier: auth.verifier.clone() };
        let edge = Edge { args: settings.edge.clone(), metrics: metrics.clone(), readiness: Readiness::database(pool.clone()) };
        let drain = Drain::new(&edge.args.drain);
        let router = drain.layer(edge.wrap(routes::router(state)));
        if !settings.kafka.kafka_disabled {
            settings.kafka.ensure_topics(&[&settings.kafka.kafka_topic]).await;
        }
        let relay = settings.relay.relay(crate::outbox::OUTBOX, &pool, &settings.kafka, &metrics)?;
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        let idempotency_sweep = std::time::Duration::from_secs(settings.idempotency_sweep_secs.max(1));
        Ok(Self { listener, router, drain, pool, relay, auth, idempotency_sweep })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves until `shutdown` resolves; in-flight requests finish first.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "patient-service listening");
        let stop = CancellationToken::new();
        // The peer address (`ConnectInfo`) goes into audit records.
        let http = self.drain.serve(self.listener, self.router, stop.clone());
        let mut tasks: Vec<(&str, Task)> = vec![("http-server", Box::pin(http))];
        tasks.push(("jwks-refresh", Box::pin(self.auth.keep_fresh(stop.clone()))));
        let sweep = crate::idempotency::sweep_until(self.pool.clone(), self.idempotency_sweep, stop.clone());
        tasks.push(("idempotency-sweep", Box::pin(sweep)));
        if let Some(relay) = self.relay {
            tasks.push(("outbox-relay", Box::pin(relay.run(stop.clone()))));
        }
        let result = common::tasks::run_siblings(tasks, stop, shutdown).await;
        self.pool.close().await;
        result
    }
}
