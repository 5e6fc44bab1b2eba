//! A circuit breaker for calls to one dependency: after `failure_threshold` consecutive
//! transient failures it opens and refuses calls at once for `open_for`; then ONE call is let
//! through as a probe (half-open): its success closes the breaker, its failure opens it again.
//! The state is exported as `circuit_breaker_state{dependency}` (0 closed, 1 open, 2 half-open)
//! with counters of refusals and openings. Time is tokio's, so tests control it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::metrics::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it reports.
    HalfOpen,
}

impl State {
    fn gauge(self) -> i64 {
        match self {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen => 2,
        }
    }
}

/// Refused without calling the dependency; `retry_after` is when the breaker lets a probe through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub retry_after: Duration,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    failure_threshold: u32,
    open_for: Duration,
    metrics: Arc<Registry>,
    /// The dependency's name, for logs.
    dependency: String,
    state_series: String,
    rejected_series: String,
    opened_series: String,
}

impl Breaker {
    /// A closed breaker for `dependency` (a metric label), registering its series at 0.
    pub fn new(dependency: &str, failure_threshold: u32, open_for: Duration, metrics: Arc<Registry>) -> Self {
        let label = format!("{{dependency=\"{dependency}\"}}");
        let breaker = Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            failure_threshold: failure_threshold.max(1),
            open_for,
            dependency: dependency.to_owned(),
            state_series: format!("circuit_breaker_state{label}"),
            rejected_series: format!("circuit_breaker_rejected_total{label}"),
            opened_series: format!("circuit_breaker_opened_total{label}"),
            metrics,
        };
        breaker.metrics.set_gauge(&breaker.state_series, 0);
        breaker.metrics.add(&breaker.rejected_series, 0);
        breaker.metrics.add(&breaker.opened_series, 0);
        breaker
    }

    /// Permission for one call, or [`Open`] when the dependency is known to be down. The
    /// [`Attempt`] must report how the call went; dropped unreported (the caller went away), it
    /// frees the probe slot without judging the dependency.
    pub fn attempt(&self) -> Result<Attempt<'_>, Open> {
        let now = Instant::now();
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now >= until => {
                self.set(&mut state, State::HalfOpen);
                true
            }
            State::Open { until } => return Err(self.refuse(until - now)),
            State::HalfOpen => return Err(self.refuse(self.open_for)),
        };
        Ok(Attempt { breaker: self, probe, reported: false })
    }

    /// [`Open`] (counted as a refusal) when an [`Breaker::attempt`] now would be refused, without
    /// taking the probe slot: for a caller with work to do before its call (fetching a token),
    /// which should not do it while the dependency is known to be down.
    pub fn refuses(&self) -> Option<Open> {
        let now = Instant::now();
        match *self.lock() {
            State::Closed { .. } => None,
            State::Open { until } if now >= until => None,
            State::Open { until } => Some(self.refuse(until - now)),
            State::HalfOpen => Some(self.refuse(self.open_for)),
        }
    }

    fn refuse(&self, retry_after: Duration) -> Open {
        self.metrics.inc(&self.rejected_series);
        Open { retry_after }
    }

    /// Once the breaker left Closed, only the probe's outcome counts: a late answer of a call
    /// admitted before it opened neither closes nor re-opens it.
    fn succeeded(&self, probe: bool) {
        let mut state = self.lock();
        match *state {
            State::Closed { failures: 0 } => {}
            State::Closed { .. } => *state = State::Closed { failures: 0 },
            State::HalfOpen if probe => {
                tracing::info!(dependency = %self.dependency, "circuit closed: the probe succeeded");
                self.set(&mut state, State::Closed { failures: 0 });
            }
            State::HalfOpen | State::Open { .. } => {}
        }
    }

    fn failed(&self, probe: bool) {
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 < self.failure_threshold => {
                *state = State::Closed { failures: failures + 1 }
            }
            State::Closed { .. } => self.open(&mut state),
            State::HalfOpen if probe => self.open(&mut state),
            State::HalfOpen | State::Open { .. } => {}
        }
    }

    fn open(&self, state: &mut State) {
        tracing::warn!(dependency = %self.dependency, open_ms = self.open_for.as_millis() as u64, "circuit opened");
        self.metrics.inc(&self.opened_series);
        self.set(state, State::Open { until: Instant::now() + self.open_for });
    }

    fn abandoned(&self, probe: bool) {
        let mut state = self.lock();
        if probe && *state == State::HalfOpen {
            // Let the next caller probe at once.
            self.set(&mut state, State::Open { until: Instant::now() });
        }
    }

    fn set(&self, state: &mut State, new: State) {
        *state = new;
        self.metrics.set_gauge(&self.state_series, new.gauge());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One admitted call; report its outcome with [`Attempt::succeeded`] or [`Attempt::failed`].
#[derive(Debug)]
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Attempt<'_> {
    /// The dependency answered (an error of the request itself counts as an answer).
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.succeeded(self.probe);
    }

    /// The dependency was down, overloaded or too slow.
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(5);

    fn breaker() -> (Breaker, Arc<Registry>) {
        let metrics = Registry::new();
        (Breaker::new("billing", 3, OPEN_FOR, metrics.clone()), metrics)
    }

    fn state(metrics: &Registry) -> i64 {
        metrics.gauge("circuit_breaker_state{dependency=\"billing\"}")
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_refuses_until_the_window_ends() {
        let (b, metrics) = breaker();
        b.attempt().unwrap().failed();
        b.attempt().unwrap().failed();
        b.attempt().unwrap().succeeded();
        b.attempt().unwrap().failed();
        b.attempt().unwrap().failed();
        assert_eq!(state(&metrics), 0, "successes reset the count");
        b.attempt().unwrap().failed();
        assert_eq!(state(&metrics), 1);

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.attempt().unwrap_err(), Open { retry_after: Duration::from_secs(3) });
        assert_eq!(metrics.get("circuit_breaker_rejected_total{dependency=\"billing\"}"), 1);
        assert_eq!(metrics.get("circuit_breaker_opened_total{dependency=\"billing\"}"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_tells_what_an_attempt_would_meet_without_taking_the_probe() {
        let (b, metrics) = breaker();
        assert!(b.refuses().is_none(), "closed");
        for _ in 0..3 {
            b.attempt().unwrap().failed();
        }
        assert_eq!(b.refuses(), Some(Open { retry_after: OPEN_FOR }));
        assert_eq!(metrics.get("circuit_breaker_rejected_total{dependency=\"billing\"}"), 1);
        tokio::time::advance(OPEN_FOR).await;
        assert!(b.refuses().is_none(), "the probe may go");
        assert_eq!(state(&metrics), 1, "still open: asking took no probe");
        let probe = b.attempt().expect("the probe");
        assert!(b.refuses().is_some(), "one probe at a time");
        probe.succeeded();
        assert!(b.refuses().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_its_outcome_decides() {
        let (b, metrics) = breaker();
        for _ in 0..3 {
            b.attempt().unwrap().failed();
        }
        tokio::time::advance(OPEN_FOR).await;
        let probe = b.attempt().expect("the probe");
        assert_eq!(state(&metrics), 2);
        assert!(b.attempt().is_err(), "only one probe at a time");
        probe.failed();
        assert_eq!(state(&metrics), 1, "a failed probe opens it again");
        assert!(b.attempt().is_err());

        tokio::time::advance(OPEN_FOR).await;
        b.attempt().expect("the next probe").succeeded();
        assert_eq!(state(&metrics), 0);
        b.attempt().expect("closed again").succeeded();
    }

    #[tokio::test(start_paused = true)]
    async fn late_answers_of_calls_admitted_before_it_opened_change_nothing() {
        let (b, metrics) = breaker();
        let early = [b.attempt().unwrap(), b.attempt().unwrap()];
        for _ in 0..3 {
            b.attempt().unwrap().failed();
        }
        let [slow_success, slow_failure] = early;
        slow_success.succeeded();
        assert_eq!(state(&metrics), 1, "still open: only a probe may close it");
        tokio::time::advance(OPEN_FOR).await;
        let probe = b.attempt().expect("the probe");
        slow_failure.failed();
        assert_eq!(state(&metrics), 2, "a late failure does not re-open it under the probe");
        probe.succeeded();
        assert_eq!(state(&metrics), 0);
        assert_eq!(metrics.get("circuit_breaker_opened_total{dependency=\"billing\"}"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot() {
        let (b, _) = breaker();
        for _ in 0..3 {
            b.attempt().unwrap().failed();
        }
        tokio::time::advance(OPEN_FOR).await;
        drop(b.attempt().expect("the probe"));
        b.attempt().expect("another caller probes at once").succeeded();
    }
}
