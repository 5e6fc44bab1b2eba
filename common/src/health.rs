//! `/health/live` and `/health/ready` for every service; each service plugs in the checks its
//! readiness depends on (its database, its signing keys, ...).

use std::{future::Future, pin::Pin, sync::Arc};

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::{json, Map, Value};
use sqlx::PgPool;

type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Named checks; ready when every one passes.
#[derive(Clone, Default)]
pub struct Readiness(Vec<(&'static str, Probe)>);

impl Readiness {
    /// Adds a check, reported under `name` as `UP` or `DOWN`.
    pub fn check<F, Fut>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.0.push((name, Arc::new(move || Box::pin(probe()))));
        self
    }

    /// Ready while `pool`'s database answers.
    pub fn database(pool: PgPool) -> Self {
        Self::default().check("database", move || {
            let pool = pool.clone();
            async move {
                let result = sqlx::query("SELECT 1").execute(&pool).await;
                if let Err(err) = &result {
                    tracing::warn!(error = %err, "readiness check: database unavailable");
                }
                result.is_ok()
            }
        })
    }
}

impl Readiness {
    /// True when every check passes (for health reported elsewhere than `/health/ready`).
    pub async fn all_up(&self) -> bool {
        for (_, probe) in &self.0 {
            if !probe().await {
                return false;
            }
        }
        true
    }
}

/// Liveness (the process answers) and readiness (every check passes).
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/health/live", get(|| async { Json(json!({ "status": "UP" })) }))
        .route("/health/ready", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, Json<Value>) {
    let mut body = Map::new();
    let mut all_up = true;
    for (name, probe) in &readiness.0 {
        let up = probe().await;
        all_up &= up;
        body.insert((*name).into(), json!(if up { "UP" } else { "DOWN" }));
    }
    body.insert("status".into(), json!(if all_up { "UP" } else { "DOWN" }));
    let status = if all_up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Value::Object(body)))
}
