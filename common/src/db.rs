//! PostgreSQL settings and helpers every service uses the same way.

use std::time::Duration;

use crate::secret::Secret;
use anyhow::Context;
use clap::Args;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, Connection, Executor, PgConnection, PgPool};

/// A pooled connection idle this long is pinged before it is handed out.
pub const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

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
        self.connect_and_migrate_as(migrator, None).await
    }

    /// Applies the migrations as the URL's user (the schema's owner), then opens the pool whose
    /// connections act as `runtime_role` (`SET ROLE`): a role the migrations created with only the
    /// privileges the service needs, so the running service cannot, say, change its audit trail.
    pub async fn connect_and_migrate_as(
        &self,
        migrator: &Migrator,
        runtime_role: Option<&'static str>,
    ) -> anyhow::Result<PgPool> {
        let url = self.database_url.expose();
        let mut owner = PgConnection::connect(url).await.context("failed to connect to PostgreSQL")?;
        if let Some(role) = runtime_role {
            ensure_role(&mut owner, role).await?;
        }
        migrator.run(&mut owner).await.context("failed to apply database migrations")?;
        owner.close().await.context("failed to close the migration connection")?;
        let mut options = PgPoolOptions::new()
            .max_connections(self.database_max_connections)
            .acquire_timeout(Duration::from_millis(self.database_acquire_timeout_ms))
            // A connection back from a statement moments ago is alive: pinging it before every
            // use would double the round trips of a busy service. One that sat idle is pinged
            // and, if the server dropped it (a restart), closed and replaced before anyone uses it.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for < PING_WHEN_IDLE_FOR {
                        return Ok(true);
                    }
                    conn.ping().await.map(|()| true)
                })
            });
        if let Some(role) = runtime_role {
            // A constant of the service, never input: safe to splice as an identifier.
            options = options.after_connect(move |conn, _| {
                Box::pin(async move { conn.execute(format!("SET ROLE {role}").as_str()).await.map(|_| ()) })
            });
        }
        options.connect(url).await.context("failed to connect to PostgreSQL")
    }
}

/// Creates `role` (NOLOGIN) unless it exists, before the migrations that grant it privileges.
/// Roles belong to the whole cluster: services migrating different databases of one cluster at
/// the same time (replicas on fresh databases, test suites) would otherwise race in the
/// migration's own `IF NOT EXISTS` check, and the loser fail on the role's unique name. Here the
/// loser's duplicate error is that race, and harmless.
async fn ensure_role(conn: &mut PgConnection, role: &'static str) -> anyhow::Result<()> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(&mut *conn)
        .await
        .context("failed to look up the runtime role")?;
    if exists {
        return Ok(());
    }
    // A constant of the service, never input: safe to splice as an identifier.
    match conn.execute(format!("CREATE ROLE {role} NOLOGIN").as_str()).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("42710" | "23505")) => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context("failed to create the runtime role")),
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
