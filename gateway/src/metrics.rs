//! Counters of the gateway, served in the Prometheus text format at `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests_allowed: AtomicU64,
    pub requests_unauthenticated: AtomicU64,
    pub requests_forbidden: AtomicU64,
    pub jwks_fetch_success: AtomicU64,
    pub jwks_fetch_failure: AtomicU64,
    pub upstream_failures: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus exposition text.
    pub fn render(&self) -> String {
        let rows = [
            ("gateway_requests_total{outcome=\"allowed\"}", &self.requests_allowed),
            ("gateway_requests_total{outcome=\"unauthenticated\"}", &self.requests_unauthenticated),
            ("gateway_requests_total{outcome=\"forbidden\"}", &self.requests_forbidden),
            ("gateway_jwks_fetch_total{result=\"success\"}", &self.jwks_fetch_success),
            ("gateway_jwks_fetch_total{result=\"failure\"}", &self.jwks_fetch_failure),
            ("gateway_upstream_failures_total", &self.upstream_failures),
        ];
        let mut out = String::from(
            "# TYPE gateway_requests_total counter\n# TYPE gateway_jwks_fetch_total counter\n# TYPE gateway_upstream_failures_total counter\n",
        );
        for (name, value) in rows {
            out.push_str(&format!("{name} {}\n", value.load(Ordering::Relaxed)));
        }
        out
    }
}
