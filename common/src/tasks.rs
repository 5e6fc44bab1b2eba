//! Running a service's sibling tasks (servers, workers) under one stop signal.

use std::{future::Future, pin::Pin};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A boxed sibling task: servers, consumers and workers of one service side by side.
pub type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs the named tasks until `shutdown` resolves or any task exits; then cancels `stop` so the
/// others drain, waits for all, and says which one exited first and why. The first error wins.
pub async fn run_siblings<F>(
    tasks: Vec<(&'static str, F)>,
    stop: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    });
    let mut set = JoinSet::new();
    for (name, task) in tasks {
        set.spawn(async move { (name, task.await) });
    }
    let mut first_error = None;
    let mut first = true;
    while let Some(joined) = set.join_next().await {
        let (name, result) = match joined {
            Ok(pair) => pair,
            Err(join_err) => ("task", Err(anyhow::anyhow!("task panicked: {join_err}"))),
        };
        match &result {
            Ok(()) if first && !stop.is_cancelled() => tracing::warn!(task = name, "exited unexpectedly; stopping the others"),
            Ok(()) => tracing::info!(task = name, "stopped"),
            Err(err) => tracing::error!(task = name, error = ?err, "failed; stopping the others"),
        }
        first = false;
        stop.cancel();
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}
