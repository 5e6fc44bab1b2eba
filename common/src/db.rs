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

/// `Retry-After` of a request refused because no database connection could be had.
pub const RETRY_UNREACHABLE_AFTER_SECS: u64 = 2;

/// Whether no connection could be had at all: none came free in time (the pool is saturated, or
/// the server is down and every connect failed until the acquire timeout) or the pool is closed.
/// The step that failed did nothing.
pub fn no_connection(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

/// Whether `err` says the database is unreachable or going away rather than anything about the
/// statement: [`no_connection`], or the connection broke (I/O, TLS, a connection exception
/// (SQLSTATE class 08), the server shutting down (57P01–57P03) or full (53300)). For a broken
/// connection, whether the statement took effect is unknown.
pub fn unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300"))
        }
        _ => false,
    }
}

/// The first database error in an error's chain.
pub fn database_error(err: &anyhow::Error) -> Option<&sqlx::Error> {
    err.chain().find_map(|cause| cause.downcast_ref::<sqlx::Error>())
}

/// The answer to a request that failed because no database connection could be had
/// ([`no_connection`]): 503 with `Retry-After`, nothing was done. `None` for any other failure
/// (a connection that broke mid-request may have committed: that stays a 500).
pub fn unreachable_problem(err: &anyhow::Error) -> Option<crate::problem::Problem> {
    database_error(err).filter(|e| no_connection(e)).map(|_| {
        tracing::warn!(error = %format!("{err:#}"), "no database connection could be had; request refused");
        crate::problem::Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the service cannot reach its database at the moment; nothing was done, retry later",
        )
        .with_retry_after(RETRY_UNREACHABLE_AFTER_SECS)
    })
}

/// The constraint (or unique index) a PostgreSQL unique violation (SQLSTATE 23505) hit, so a
/// service can tell which uniqueness rule a write broke; `None` for any other error.
pub fn unique_violation_on(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn a_missing_connection_is_503_and_a_broken_one_stays_a_500() {
        let broken = || sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(no_connection(&sqlx::Error::PoolTimedOut) && no_connection(&sqlx::Error::PoolClosed));
        assert!(!no_connection(&broken()) && unavailable(&broken()));
        assert!(unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!unavailable(&sqlx::Error::RowNotFound));

        let timed_out = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("database operation failed").context("create");
        let response = unreachable_problem(&timed_out).expect("a 503").into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], RETRY_UNREACHABLE_AFTER_SECS.to_string().as_str());
        assert!(unreachable_problem(&anyhow::Error::new(broken()).context("update")).is_none(), "it may have committed");
        assert!(unreachable_problem(&anyhow::anyhow!("something else")).is_none());
    }
}
