//! Builds notification-service from its settings; `main` and the tests share this path.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use axum::Router;
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

use crate::{config::Settings, consumer::Notifier, sender::Sender, templates::Templates, MIGRATOR};

/// A bound, migrated, subscribed, not yet running notification-service.
pub struct Application {
    listener: TcpListener,
    pool: PgPool,
    consumer: Option<(EventConsumer, Notifier)>,
    sender: Sender,
    metrics: Arc<Registry>,
    edge: EdgeArgs,
}

const DEAD_LETTERED: &str = "notification_records_total{result=\"dead_lettered\"}";

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let templates = Templates::load(settings.templates_dir.as_deref()).context("failed to load the mail templates")?;
        let from = settings.smtp.mail_from.parse().context("MAIL_FROM is not a mailbox")?;
        let pool = settings.db.connect_and_migrate(&MIGRATOR).await?;
        let metrics = Registry::new();
        let consumer = if settings.kafka.kafka_disabled {
            tracing::warn!("Kafka disabled: no events, no mails but those already queued");
            None
        } else {
            let topics = [settings.kafka.kafka_topic.as_str(), settings.appointment_topic.as_str()];
            let (consumer, dead_letters) = settings
                .kafka
                .consumer_of_topics_with_dead_letters(&settings.group_id, &topics, metrics.clone(), DEAD_LETTERED)
                .await?;
            let notifier = Notifier {
                db: pool.clone(),
                dead_letters,
                appointment_topic: settings.appointment_topic.clone(),
                partition_ends: settings.kafka.partition_ends()?,
                reminder_before: settings.reminder_before(),
                mailing_since: crate::mails::mailing_since(&pool, settings.mail_backfill())
                    .await
                    .context("failed to read since when events are mailed")?,
            };
            Some((consumer, notifier))
        };
        let sender = Sender {
            db: pool.clone(),
            smtp: crate::sender::transport(&settings.smtp)?,
            smtp_timeout: std::time::Duration::from_millis(settings.smtp.smtp_timeout_ms),
            from,
            templates,
            zone: settings.mail_time_zone,
            args: settings.sender.clone(),
            metrics: metrics.clone(),
        };
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP address {}", settings.http_addr))?;
        Ok(Self { listener, pool, consumer, sender, metrics, edge: settings.edge })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Consumes, sends and serves health until `shutdown`; the consumer commits its offsets and
    /// the sender finishes the mail in hand before this returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "notification-service listening");
        let stop = CancellationToken::new();
        let edge = Edge { args: self.edge, metrics: self.metrics.clone(), readiness: Readiness::database(self.pool.clone()) };
        let drain = Drain::new(&edge.args.drain);
        let router = drain.layer(edge.wrap(Router::new()));
        let http = drain.serve(self.listener, router, stop.clone());
        let mut tasks: Vec<(&str, Task)> = vec![("http-server", Box::pin(http))];
        tasks.push(("mail-sender", Box::pin(self.sender.run(stop.clone()))));
        if let Some((consumer, notifier)) = self.consumer {
            let s = stop.clone();
            tasks.push(("event-consumer", Box::pin(async move { common::kafka::consume(consumer, &notifier, s).await })));
        }
        let result = common::tasks::run_siblings(tasks, stop, shutdown).await;
        self.pool.close().await;
        result
    }
}
