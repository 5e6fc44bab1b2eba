//! Builds appointment-service from its settings; `main` and the tests share this path.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use common::{
    edge::{Edge, EdgeArgs},
    health::Readiness,
    kafka::EventConsumer,
    metrics::Registry,
    outbox::Relay,
    shutdown::Drain,
    tasks::Task,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use verifier::settings::Auth;

use crate::{
    config::Settings,
    events::OUTBOX,
    projection::Projection,
    replica::PatientReplica,
    routes::{self, AppState},
    MIGRATOR,
};

/// The two consumers: the patient replica and the schedule projection.
struct Consumers {
    replica: (EventConsumer, PatientReplica),
    projection: (EventConsumer, Projection),
}

/// A bound, migrated, subscribed, not yet running appointment-service.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: Option<Relay>,
    consumers: Option<Consumers>,
    metrics: Arc<Registry>,
    auth: Auth,
    edge: EdgeArgs,
}

/// Counted once per record dead-lettered by either consumer.
const DEAD_LETTERED: &str = "appointment_records_total{result=\"dead_lettered\"}";

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = settings.db.connect_and_migrate(&MIGRATOR).await?;
        let metrics = Registry::new();
        verifier::metrics::register(&metrics);
        let auth = settings.oidc.start(metrics.clone()).await?;
        let appointments = settings.appointment_kafka();
        let consumers = if settings.kafka.kafka_disabled {
            tracing::warn!("Kafka disabled: no patient replica, no projection");
            None
        } else {
            appointments.ensure_topics(&[&appointments.kafka_topic]).await;
            let (consumer, dead_letters) =
                settings.kafka.consumer_with_dead_letters(&settings.group_id, metrics.clone(), DEAD_LETTERED).await?;
            let replica = (consumer, PatientReplica { db: pool.clone(), dead_letters });
            let (consumer, dead_letters) =
                appointments.consumer_with_dead_letters(&settings.projection_group_id, metrics.clone(), DEAD_LETTERED).await?;
            let projection = (consumer, Projection { db: pool.clone(), dead_letters });
            Some(Consumers { replica, projection })
        };
        let relay = settings.relay.relay(OUTBOX, &pool, &appointments, &metrics)?;
        let state = AppState {
            db: pool,
            verifier: auth.verifier.clone(),
            max_minutes: settings.max_appointment_minutes,
            check_in_opens: chrono::Duration::minutes(settings.check_in_opens_minutes.max(0)),
            wait_max: settings.projection_wait_max(),
            zone: settings.schedule_time_zone,
        };
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        Ok(Self { listener, state, relay, consumers, metrics, auth, edge: settings.edge })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves, relays and consumes until `shutdown`; the relay flushes its producer and the
    /// consumers commit their offsets before this returns (a consumer that cannot reach the
    /// broker gives up after `common::kafka::CLOSE_LIMIT`: its records are redelivered).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "appointment-service listening");
        let stop = CancellationToken::new();
        let pool = self.state.db.clone();
        let edge = Edge { args: self.edge, metrics: self.metrics.clone(), readiness: Readiness::database(pool.clone()) };
        let drain = Drain::new(&edge.args.drain);
        let router = drain.layer(edge.wrap(routes::router(self.state)));
        let http = drain.serve(self.listener, router, stop.clone());
        let mut tasks: Vec<(&str, Task)> = vec![("http-server", Box::pin(http))];
        tasks.push(("jwks-refresh", Box::pin(self.auth.keep_fresh(stop.clone()))));
        if let Some(relay) = self.relay {
            tasks.push(("outbox-relay", Box::pin(relay.run(stop.clone()))));
        }
        if let Some(Consumers { replica, projection }) = self.consumers {
            let s = stop.clone();
            tasks.push(("patient-replica", Box::pin(async move { common::kafka::consume(replica.0, &replica.1, s).await })));
            let s = stop.clone();
            tasks.push((
                "schedule-projection",
                Box::pin(async move { common::kafka::consume(projection.0, &projection.1, s).await }),
            ));
        }
        let result = common::tasks::run_siblings(tasks, stop, shutdown).await;
        pool.close().await;
        result
    }
}
