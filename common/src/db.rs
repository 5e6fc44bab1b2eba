//! PostgreSQL settings and helpers every service uses the same way.

use std::time::Duration;

use crate::secret::Secret;
use anyhow::Context;
use clap::Args;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};

/// Database settings, flattened into each service's settings.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Connection URL of this service's own database (it holds a password: never printed, not
    /// even by `--help`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
    /// Upper bound of pooled connections.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// How long a request waits for a free connection before failing.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 5_000)]
    pub database_acquire_timeout_ms: u64,
}

impl DbArgs {
    /// Settings for a URL with default pool sizing (tests, tools).
    pub fn from_url(url: impl Into<String>) -> Self {
        Self { database_url: Secret::new(url), database_max_connections: 10, database_acquire_timeout_ms: 5_000 }
    }

    /// Opens the pool and applies the service's migrations.
    pub async fn connect_and_migrate(&self, migrator: &Migrator) -> anyhow::Result<PgPool> {
        let pool = PgPoolOptions::new()
            .max_connections(self.database_max_connections)
            .acquire_timeout(Duration::from_millis(self.database_acquire_timeout_ms))
            .connect(self.database_url.expose())
            .await
            .context("failed to connect to PostgreSQL")?;
        migrator.run(&pool).await.context("failed to apply database migrations")?;
        Ok(pool)
    }
}

/// The constraint (or unique index) a PostgreSQL unique violation (SQLSTATE 23505) hit, so a
/// service can tell which uniqueness rule a write broke; `None` for any other error.
pub fn unique_violation_on(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
}
