//! Builds billing-service from its settings; `main` and the tests share this path.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use common::{
    edge::{Edge, EdgeArgs},
    health::Readiness,
    kafka::{DeadLetters, EventConsumer},
    metrics::Registry,
    shutdown::Drain,
    tasks::Task,
};
use proto::billing::billing_service_server::BillingServiceServer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::{server::HealthReporter, ServingStatus};

use tower::Layer;
use verifier::{access, grpc::RequireCallerLayer, settings::Auth};

use crate::{
    config::{GrpcLimits, Settings},
    consumer::BillingEventHandler,
    grpc::BillingGrpc,
    pending, MIGRATOR,
};

/// A bound, migrated, not yet serving billing-service.
pub struct Application {
    grpc: TcpListener,
    http: TcpListener,
    pool: PgPool,
    consumer: Option<(EventConsumer, DeadLetters)>,
    metrics: Arc<Registry>,
    auth: Auth,
    pending_window: std::time::Duration,
    edge: EdgeArgs,
    grpc_limits: GrpcLimits,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = settings.db.connect_and_migrate(&MIGRATOR).await?;
        let grpc = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("failed to bind gRPC address {}", settings.grpc_addr))?;
        let http = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        let metrics = Registry::new();
        verifier::metrics::register(&metrics);
        // Every series present from the start (at 0), so dashboards and alerts see them.
        for series in [
            "billing_accounts_total{result=\"created\"}",
            "billing_accounts_total{result=\"existing\"}",
            "billing_accounts_activated_total{how=\"pending\"}",
            "billing_accounts_activated_total{how=\"voided\"}",
            "billing_accounts_activated_total{how=\"missing\"}",
            "billing_accounts_closed_total",
            "billing_accounts_refreshed_total",
            "billing_accounts_voided_total",
        ] {
            metrics.add(series, 0);
        }
        let consumer = match settings.kafka.kafka_disabled {
            true => None,
            false => Some(
                settings
                    .kafka
                    .consumer_with_dead_letters(&settings.group_id, metrics.clone(), "billing_events_dead_lettered_total")
                    .await?,
            ),
        };
        let auth = settings.oidc.start(metrics.clone()).await?;
        let pending_window = settings.pending_account_window();
        Ok(Self { grpc, http, pool, consumer, metrics, auth, pending_window, edge: settings.edge, grpc_limits: settings.grpc })
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn http_port(&self) -> u16 {
        self.http.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves gRPC and HTTP until `shutdown` resolves or either server fails; in-flight calls
    /// finish before it returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(grpc_port = self.grpc_port(), http_port = self.http_port(), "billing-service listening");
        let stop = CancellationToken::new();

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<BillingServiceServer<BillingGrpc>>().await;
        let readiness = Readiness::database(self.pool.clone());
        let reflection_v1 = reflection().build_v1().context("failed to build reflection v1")?;
        let reflection_v1alpha = reflection().build_v1alpha().context("failed to build reflection v1alpha")?;
        let grpc = self
            .grpc_limits
            .server()
            // One span per call, a child of the caller's (W3C trace context in the metadata).
            .trace_fn(|req| {
                let trace_id = common::telemetry::trace_id(req.headers()).unwrap_or_default();
                let span = tracing::info_span!("grpc", path = %req.uri().path(), trace_id);
                common::telemetry::continue_trace(&span, req.headers());
                span
            })
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                RequireCallerLayer::new(self.auth.verifier.clone(), access::billing_rpc_roles)
                    .layer(BillingServiceServer::new(BillingGrpc::new(self.pool.clone(), self.metrics.clone()))),
            )
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.grpc), stop.clone().cancelled_owned());
        let metrics = self.metrics.clone();
        // The HTTP port carries only the operational routes.
        let edge = Edge { args: self.edge, metrics: metrics.clone(), readiness: readiness.clone() };
        let drain = Drain::new(&edge.args.drain);
        let http_routes = drain.layer(edge.wrap(axum::Router::new()));
        let http = drain.serve(self.http, http_routes, stop.clone());

        let mut tasks: Vec<(&str, Task)> = vec![
            ("grpc-server", Box::pin(async move { grpc.await.context("gRPC server failed") })),
            ("http-server", Box::pin(http)),
            ("jwks-refresh", Box::pin(self.auth.keep_fresh(stop.clone()))),
            ("grpc-health", Box::pin(health_follows(readiness, health, stop.clone()))),
        ];
        match self.consumer {
            Some((consumer, dead_letters)) => {
                let handler = BillingEventHandler { db: self.pool.clone(), dead_letters, metrics: metrics.clone() };
                let until = stop.clone();
                tasks.push(("event-consumer", Box::pin(async move { common::kafka::consume(consumer, &handler, until).await })));
                let sweep = pending::sweep_until_stopped(self.pool.clone(), self.pending_window, metrics.clone(), stop.clone());
                tasks.push(("pending-sweeper", Box::pin(sweep)));
            }
            // Without the topic no account can be activated, so none is voided either.
            None => tracing::warn!("Kafka disabled: accounts stay PENDING, the sweeper does not run"),
        }
        let result = common::tasks::run_siblings(tasks, stop, shutdown).await;
        self.pool.close().await;
        result
    }
}

/// How often gRPC health looks at the database.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Checks in a row that must fail before gRPC health says NOT_SERVING (one slow check under load
/// must not take every replica out at once).
const HEALTH_FAILURES: u32 = 2;

/// Keeps gRPC health in step with readiness: the server and `BillingService` are NOT_SERVING
/// while the database does not answer (a gRPC-aware balancer or probe then sends calls to
/// another replica), SERVING again at the first check it answers. The same check as
/// `/health/ready`.
async fn health_follows(readiness: Readiness, health: HealthReporter, stop: CancellationToken) -> anyhow::Result<()> {
    let (mut serving, mut failures) = (true, 0);
    while !stop.is_cancelled() {
        failures = if readiness.all_up().await { 0 } else { failures + 1 };
        let up = failures < HEALTH_FAILURES;
        if up != serving {
            serving = up;
            let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            if up {
                tracing::info!("gRPC health: SERVING again, the database answers");
            } else {
                tracing::warn!("gRPC health: NOT_SERVING, the database does not answer");
            }
            health.set_service_status("", status).await;
            health.set_service_status(BillingServiceServer::<BillingGrpc>::NAME, status).await;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
    Ok(())
}

/// Server reflection over every contract we serve, so grpcurl needs no .proto file.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
