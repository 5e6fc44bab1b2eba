//! The sweeper of PENDING accounts: an account whose patient never appeared on the `patient`
//! topic within the window is voided (status VOIDED, name and email scrubbed). Every instance may
//! run it: the statement is idempotent.

use std::{sync::Arc, time::Duration};

use common::metrics::Registry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::repo;

/// How often the sweeper looks: a quarter of the window, between 100 ms and 30 s.
pub fn sweep_interval(window: Duration) -> Duration {
    (window / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

/// Voids stale PENDING accounts every [`sweep_interval`] until `stop`. A failed sweep (database
/// down) is logged and tried again at the next tick: nothing is lost by waiting.
pub async fn sweep_until_stopped(
    db: PgPool,
    window: Duration,
    metrics: Arc<Registry>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(sweep_interval(window));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match repo::void_stale_pending(&db, window).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.add("billing_accounts_voided_total", n);
                tracing::warn!(
                    voided = n,
                    window_secs = window.as_secs_f64(),
                    "voided billing accounts whose patient never appeared"
                );
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "sweep of pending billing accounts failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_a_quarter_of_the_window_within_bounds() {
        assert_eq!(sweep_interval(Duration::from_secs(600)), Duration::from_secs(30));
        assert_eq!(sweep_interval(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(sweep_interval(Duration::from_millis(10)), Duration::from_millis(100));
    }
}
