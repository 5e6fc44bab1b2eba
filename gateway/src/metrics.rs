//! The gateway's counters (served at `/metrics` by the shared registry).

use std::sync::Arc;

use common::metrics::Registry;

pub const ALLOWED: &str = "gateway_requests_total{outcome=\"allowed\"}";
pub const UNAUTHENTICATED: &str = "gateway_requests_total{outcome=\"unauthenticated\"}";
pub const FORBIDDEN: &str = "gateway_requests_total{outcome=\"forbidden\"}";
pub const RATE_LIMITED: &str = "gateway_requests_total{outcome=\"rate_limited\"}";
/// Unknown paths and methods.
pub const NOT_ROUTED: &str = "gateway_requests_total{outcome=\"not_routed\"}";
pub const UPSTREAM_FAILURES: &str = "gateway_upstream_failures_total";

/// A registry with every gateway series present from the start (at 0), so dashboards and
/// alerts see them before the first event.
pub fn registry() -> Arc<Registry> {
    let registry = Registry::new();
    for series in [ALLOWED, UNAUTHENTICATED, FORBIDDEN, RATE_LIMITED, NOT_ROUTED, UPSTREAM_FAILURES] {
        registry.add(series, 0);
    }
    verifier::metrics::register(&registry);
    registry
}
