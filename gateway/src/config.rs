//! Settings of the gateway, from flags or environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use common::telemetry::LogArgs;

#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", about = "JWT-verifying API gateway")]
pub struct Settings {
    /// Where the gateway listens.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4004")]
    pub http_addr: SocketAddr,
    /// The realm URL as clients see it; the first accepted `iss`.
    #[arg(long, env = "OIDC_ISSUER_URL", default_value = "http://localhost:8080/realms/patient-management")]
    pub issuer_url: String,
    /// Where the gateway itself reaches the realm for discovery and JWKS, when that differs
    /// from the issuer (e.g. `http://keycloak:8080/realms/patient-management` inside compose).
    #[arg(long, env = "OIDC_DISCOVERY_URL")]
    pub discovery_url: Option<String>,
    /// Further accepted issuers, comma-separated (the same realm under other host names).
    #[arg(long, env = "OIDC_EXTRA_ISSUERS", value_delimiter = ',')]
    pub extra_issuers: Vec<String>,
    /// Required audience (`aud`) of access tokens.
    #[arg(long, env = "OIDC_AUDIENCE", default_value = "patient-api")]
    pub audience: String,
    /// Clients whose `resource_access.<client>.roles` count besides realm roles, comma-separated.
    #[arg(long, env = "OIDC_ROLE_CLIENTS", value_delimiter = ',', default_value = "patient-api")]
    pub role_clients: Vec<String>,
    /// Clock skew tolerated on `exp` / `nbf`, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 30)]
    pub leeway_secs: u64,
    /// Longest accepted token; longer ones are rejected before any parsing.
    #[arg(long, env = "JWT_MAX_BYTES", default_value_t = 8 * 1024)]
    pub max_token_bytes: usize,
    /// How many verified tokens are remembered (a repeated token then skips RSA verification).
    #[arg(long, env = "TOKEN_CACHE_CAPACITY", default_value_t = 50_000)]
    pub token_cache_capacity: u64,
    /// Background JWKS refresh period.
    #[arg(long, env = "JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,
    /// Minimum time between two JWKS fetches triggered by unknown key ids.
    #[arg(long, env = "JWKS_MIN_REFETCH_MS", default_value_t = 2_000)]
    pub jwks_min_refetch_ms: u64,
    /// How long an unknown key id is remembered as unknown (no refetch for it meanwhile).
    #[arg(long, env = "JWKS_NEGATIVE_TTL_SECS", default_value_t = 30)]
    pub jwks_negative_ttl_secs: u64,
    /// Timeout of one discovery or JWKS request.
    #[arg(long, env = "JWKS_FETCH_TIMEOUT_MS", default_value_t = 3_000)]
    pub jwks_fetch_timeout_ms: u64,
    /// patient-service base URL.
    #[arg(long, env = "PATIENT_SERVICE_URL", default_value = "http://127.0.0.1:4000")]
    pub patient_service_url: String,
    /// analytics-service base URL.
    #[arg(long, env = "ANALYTICS_SERVICE_URL", default_value = "http://127.0.0.1:4002")]
    pub analytics_service_url: String,
    /// TCP connect timeout towards a backend.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_MS", default_value_t = 1_000)]
    pub upstream_connect_timeout_ms: u64,
    /// Time a backend has to answer with response headers.
    #[arg(long, env = "UPSTREAM_TIMEOUT_MS", default_value_t = 15_000)]
    pub upstream_timeout_ms: u64,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Settings {
    /// Settings for tests: loopback on an OS-chosen port, the given issuer and backend.
    pub fn for_issuer(issuer_url: impl Into<String>, backend_url: impl Into<String>) -> Self {
        let backend = backend_url.into();
        let mut s = Self::parse_from(["gateway"]);
        s.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        s.issuer_url = issuer_url.into();
        s.patient_service_url = backend.clone();
        s.analytics_service_url = backend;
        s
    }

    /// Every accepted `iss` value.
    pub fn accepted_issuers(&self) -> Vec<String> {
        std::iter::once(&self.issuer_url).chain(&self.extra_issuers).map(|i| i.trim_end_matches('/').to_owned()).collect()
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}
