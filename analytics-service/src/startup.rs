//! Builds analytics-service from its settings; `main` and the tests share this path.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use common::{
    edge::{Edge, EdgeArgs},
    health::Readiness,
    kafka::EventConsumer,
    metrics::Registry,
    shutdown::Drain,
    tasks::Task,
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use verifier::settings::Auth;

use crate::{config::Settings, consumer::AnalyticsHandler, routes, MIGRATOR};

/// A bound, migrated, subscribed, not yet running analytics-service.
pub struct Application {
    listener: TcpListener,
    pool: PgPool,
    consumer: Option<(EventConsumer, AnalyticsHandler)>,
    metrics: Arc<Registry>,
    auth: Auth,
    edge: EdgeArgs,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = settings.db.connect_and_migrate(&MIGRATOR).await?;
        let metrics = Registry::new();
        verifier::metrics::register(&metrics);
        // Every outcome present from the start (at 0), so dashboards and alerts see them.
        for result in ["applied", "duplicate", "dead_lettered"] {
            metrics.add(&format!("analytics_events_total{{result=\"{result}\"}}"), 0);
        }
        let auth = settings.oidc.start(metrics.clone()).await?;
        let consumer = if settings.kafka.kafka_disabled {
            tracing::warn!("Kafka disabled: no events are consumed");
            None
        } else {
            let series = "analytics_events_total{result=\"dead_lettered\"}";
            let topics = [settings.kafka.kafka_topic.as_str(), settings.appointment_topic.as_str()];
            let (consumer, dead_letters) =
                settings.kafka.consumer_of_topics_with_dead_letters(&settings.group_id, &topics, metrics.clone(), series).await?;
            let handler = AnalyticsHandler {
                db: pool.clone(),
                dead_letters,
                metrics: metrics.clone(),
                appointment_topic: settings.appointment_topic.clone(),
                zone: settings.analytics_time_zone,
            };
            Some((consumer, handler))
        };
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        Ok(Self { listener, pool, consumer, metrics, auth, edge: settings.edge })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves and consumes until `shutdown`; the consumer commits its offsets before returning.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "analytics-service listening");
        let stop = CancellationToken::new();
        let edge = Edge { args: self.edge, metrics: self.metrics.clone(), readiness: Readiness::database(self.pool.clone()) };
        let drain = Drain::new(&edge.args.drain);
        let router = drain.layer(edge.wrap(routes::router(self.pool.clone(), self.auth.verifier.clone())));
        let http = drain.serve(self.listener, router, stop.clone());
        let mut tasks: Vec<(&str, Task)> = vec![("http-server", Box::pin(http))];
        tasks.push(("jwks-refresh", Box::pin(self.auth.keep_fresh(stop.clone()))));
        if let Some((consumer, handler)) = self.consumer {
            let stop = stop.clone();
            tasks.push(("event-consumer", Box::pin(async move { common::kafka::consume(consumer, &handler, stop).await })));
        }
        let result = common::tasks::run_siblings(tasks, stop, shutdown).await;
        self.pool.close().await;
        result
    }
}
