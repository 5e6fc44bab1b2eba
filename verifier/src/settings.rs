//! How a service is told which realm to trust, and the start-up every service shares: discover
//! the realm, warm the key store, keep it fresh.

use std::{sync::Arc, time::Duration};

use clap::Args;
use common::metrics::Registry;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::TokenCache,
    jwks::{JwksSettings, KeyStore},
    Algorithm, Verifier, VerifierSettings,
};

/// The realm a service trusts; flattened into every service's settings (same variables
/// everywhere, so one environment configures the gateway and the services behind it alike).
#[derive(Debug, Clone, Args)]
pub struct OidcArgs {
    /// The realm URL as clients see it; the first accepted `iss`.
    #[arg(long, env = "OIDC_ISSUER_URL", default_value = "http://localhost:8080/realms/patient-management")]
    pub issuer_url: String,
    /// Where this service itself reaches the realm for discovery and JWKS, when that differs
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
}

impl OidcArgs {
    /// The defaults (clap's, declared once above), trusting `issuer_url` only (tests, tools).
    pub fn for_issuer(issuer_url: impl Into<String>) -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            oidc: OidcArgs,
        }
        let mut oidc = <Defaults as clap::Parser>::parse_from(["defaults"]).oidc;
        oidc.issuer_url = issuer_url.into();
        oidc.discovery_url = None;
        oidc.extra_issuers = Vec::new();
        oidc
    }

    /// Every accepted `iss` value.
    pub fn accepted_issuers(&self) -> Vec<String> {
        std::iter::once(&self.issuer_url).chain(&self.extra_issuers).map(|i| i.trim_end_matches('/').to_owned()).collect()
    }

    /// Where discovery starts.
    pub fn discovery_base(&self) -> &str {
        self.discovery_url.as_deref().unwrap_or(&self.issuer_url)
    }

    /// Builds the key store and the verifier and tries one key fetch. Keycloak being down is not
    /// fatal: the first token retries, and [`Auth::keep_fresh`] keeps trying, quickly at first.
    pub async fn start(&self, metrics: Arc<Registry>) -> anyhow::Result<Auth> {
        let algorithms = vec![Algorithm::RS256];
        let issuers = self.accepted_issuers();
        let ms = Duration::from_millis;
        let keys = Arc::new(KeyStore::new(
            JwksSettings {
                discovery_url: self.discovery_base().to_owned(),
                expected_issuers: issuers.clone(),
                algorithms: algorithms.clone(),
                min_refetch: ms(self.jwks_min_refetch_ms),
                negative_ttl: Duration::from_secs(self.jwks_negative_ttl_secs),
                fetch_timeout: ms(self.jwks_fetch_timeout_ms),
            },
            Arc::new(TokenCache::new(self.token_cache_capacity)),
            metrics.clone(),
        )?);
        let warm = keys.refresh().await.is_ok();
        let verifier = Arc::new(Verifier::new(
            keys.clone(),
            VerifierSettings {
                algorithms,
                issuers,
                audience: self.audience.clone(),
                leeway_secs: self.leeway_secs,
                role_clients: self.role_clients.clone(),
                max_token_bytes: self.max_token_bytes,
            },
            metrics,
        ));
        Ok(Auth { verifier, keys, warm, refresh_every: Duration::from_secs(self.jwks_refresh_secs.max(1)) })
    }
}

/// A started verifier and its key store.
#[derive(Debug, Clone)]
pub struct Auth {
    pub verifier: Arc<Verifier>,
    pub keys: Arc<KeyStore>,
    /// Whether the start-up fetch succeeded.
    warm: bool,
    refresh_every: Duration,
}

/// First retry after a failed fetch; doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(15);

impl Auth {
    /// Refreshes the keys periodically until `stop`. After a failure (the start-up fetch
    /// included: a service started before Keycloak) it retries from one second on, backing off,
    /// never dropping cached keys.
    pub async fn keep_fresh(self, stop: CancellationToken) -> anyhow::Result<()> {
        let every = self.refresh_every;
        let mut wait = if self.warm { every } else { FIRST_RETRY.min(every) };
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            wait = match self.keys.refresh().await {
                Ok(_) => every,
                Err(_) if wait >= every => FIRST_RETRY.min(every),
                Err(_) => (wait * 2).min(MAX_RETRY).min(every),
            };
        }
    }
}
