//! Counters of the verifier, served by the owning service's `/metrics`.

use common::metrics::Registry;

pub const JWKS_FETCH_SUCCESS: &str = "jwks_fetch_total{result=\"success\"}";
pub const JWKS_FETCH_FAILURE: &str = "jwks_fetch_total{result=\"failure\"}";
pub const TOKEN_CACHE_HIT: &str = "token_cache_total{result=\"hit\"}";
pub const TOKEN_CACHE_MISS: &str = "token_cache_total{result=\"miss\"}";

/// Puts every verifier series into `registry` at 0, so dashboards see them from the start.
pub fn register(registry: &Registry) {
    for series in [JWKS_FETCH_SUCCESS, JWKS_FETCH_FAILURE, TOKEN_CACHE_HIT, TOKEN_CACHE_MISS] {
        registry.add(series, 0);
    }
}
