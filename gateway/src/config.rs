//! Settings of the gateway, from flags or environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use common::{runtime::RuntimeArgs, shutdown::DrainArgs, telemetry::LogArgs};
use verifier::settings::OidcArgs;

use crate::{cors::Origins, forwarded::TrustedProxies, limit::LimitSpec};

/// More server threads than this is a typo, not a setting.
pub const MAX_SERVER_THREADS: u16 = 256;

#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", about = "JWT-verifying API gateway")]
pub struct Settings {
    /// Where the gateway listens.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4004")]
    pub http_addr: SocketAddr,
    /// The realm the gateway trusts (shared with every service).
    #[command(flatten)]
    pub oidc: OidcArgs,
    /// patient-service base URL.
    #[arg(long, env = "PATIENT_SERVICE_URL", default_value = "http://127.0.0.1:4000")]
    pub patient_service_url: String,
    /// analytics-service base URL.
    #[arg(long, env = "ANALYTICS_SERVICE_URL", default_value = "http://127.0.0.1:4002")]
    pub analytics_service_url: String,
    /// appointment-service base URL.
    #[arg(long, env = "APPOINTMENT_SERVICE_URL", default_value = "http://127.0.0.1:4003")]
    pub appointment_service_url: String,
    /// TCP connect timeout towards a backend.
    #[arg(long, env = "UPSTREAM_CONNECT_TIMEOUT_MS", default_value_t = 1_000)]
    pub upstream_connect_timeout_ms: u64,
    /// Time a backend has to answer with response headers (then 504). Above the services' own
    /// limit (`REQUEST_TIMEOUT_MS`, 30 000), so a slow service's own answer reaches the client
    /// (its result, or its 503 with `Retry-After`) rather than the gateway giving up first with a
    /// 504 while the service goes on.
    #[arg(long, env = "UPSTREAM_TIMEOUT_MS", default_value_t = 35_000)]
    pub upstream_timeout_ms: u64,
    /// Rate limits per client (`azp`, else `sub`): `name=rate:burst` per policy, rate per
    /// second, where a name is a role (the most generous policy among the caller's roles
    /// applies) or `default` (everyone else); `off` disables limiting.
    #[arg(long, env = "RATE_LIMITS", default_value = "default=100:200,admin=500:1000")]
    pub rate_limits: LimitSpec,
    /// Browser origins allowed to call the API (CORS), comma-separated; `:*` allows any port,
    /// as in Keycloak's web origins. The default matches the dev realm's `patient-web` client.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "http://localhost:*,http://127.0.0.1:*")]
    pub cors_allowed_origins: Origins,
    /// Proxies in front of the gateway (e.g. an ingress) whose `X-Forwarded-For`, `-Proto`,
    /// `-Host` and `-Port` are believed: IP addresses or CIDR ranges, comma-separated. From any other peer
    /// the forwarding headers a client wrote are replaced, so backends and the audit trail see
    /// the address the gateway saw. None by default.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
    /// Threads serving HTTP, each with its own event loop and its own connections to the
    /// backends: a client's connection and every request on it stay on one thread, with no
    /// hand-over between threads per request. One by default: a thread that serves every
    /// connection finds more of them ready each time it wakes, so a proxied request costs
    /// fewer wake-ups and context switches (bench/RESULTS.md); raise it when the gateway keeps
    /// one core busy. 0: one per CPU the process may use. At most 256 either way.
    #[arg(long, env = "SERVER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_SERVER_THREADS)))]
    pub server_threads: u16,
    #[command(flatten)]
    pub drain: DrainArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// How the kernel schedules the service's threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl Settings {
    /// Settings for tests: loopback on an OS-chosen port, the given issuer and backend.
    pub fn for_issuer(issuer_url: impl Into<String>, backend_url: impl Into<String>) -> Self {
        let backend = backend_url.into();
        let mut s = Self::parse_from(["gateway"]);
        s.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        s.oidc = OidcArgs::for_issuer(issuer_url);
        s.patient_service_url = backend.clone();
        s.analytics_service_url = backend.clone();
        s.appointment_service_url = backend;
        s.trusted_proxies = TrustedProxies::default();
        s
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// How many server threads to run: [`Settings::server_threads`], 0 meaning one per CPU
    /// the process may use; at most [`MAX_SERVER_THREADS`].
    pub fn threads(&self) -> usize {
        let n = match self.server_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => usize::from(n),
        };
        n.min(usize::from(MAX_SERVER_THREADS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_outwaits_the_services_own_limit() {
        let gateway = Settings::try_parse_from(["gateway"]).unwrap().upstream_timeout_ms;
        assert!(gateway > common::edge::EdgeArgs::default().request_timeout_ms, "{gateway}");
    }

    #[test]
    fn server_threads_are_bounded() {
        assert_eq!(Settings::try_parse_from(["gateway"]).unwrap().threads(), 1, "one by default");
        assert_eq!(Settings::try_parse_from(["gateway", "--server-threads", "256"]).unwrap().threads(), 256);
        assert!((1..=256).contains(&Settings::try_parse_from(["gateway", "--server-threads", "0"]).unwrap().threads()));
        let err = Settings::try_parse_from(["gateway", "--server-threads", "257"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("0..=256"), "{err}");
    }
}
