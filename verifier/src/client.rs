//! The service's own identity towards other services (SPEC §10): an access token from the
//! realm by `client_credentials` (through `openidconnect`'s client), cached and fetched again
//! shortly before it expires. When that early renewal fails (the realm restarting), the held
//! token is used until it expires, and the renewal is tried again a little later rather than
//! by every caller in turn. The token and the secret never reach a log.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use common::secret::Secret;
use openidconnect::{
    core::{CoreClient, CoreProviderMetadata},
    ClientId, ClientSecret, OAuth2TokenResponse,
};
use tokio::{sync::Mutex, time::Instant};

use crate::{discovery, settings::OidcArgs};

/// The client a service authenticates as.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Client id this service calls other services as (client_credentials).
    #[arg(long, env = "OIDC_CLIENT_ID", default_value = "ms-api")]
    pub client_id: String,
    /// Secret of that client.
    #[arg(long, env = "OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Secret,
}

/// Fetched again when less than this is left (or a quarter of the lifetime, if that is less).
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// After a failed renewal, the held token serves until the next try, this much later.
const RETRY_RENEWAL: Duration = Duration::from_secs(1);

struct Held {
    token: Secret,
    renew_at: Instant,
    expires_at: Instant,
}

/// What the single fetcher keeps: the realm's metadata (discovered once) and the token.
#[derive(Default)]
struct State {
    metadata: Option<CoreProviderMetadata>,
    held: Option<Held>,
}

/// A cached client_credentials token; one fetch at a time.
pub struct ServiceToken {
    http: reqwest::Client,
    oidc: OidcArgs,
    client: ClientArgs,
    /// One fetch at a time; callers that arrive meanwhile wait for it and share its token.
    state: Mutex<State>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken").field("client_id", &self.client.client_id).finish_non_exhaustive()
    }
}

impl ServiceToken {
    pub fn new(oidc: OidcArgs, client: ClientArgs) -> anyhow::Result<Self> {
        // No redirects: a token request must not be bounced elsewhere with the secret.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(oidc.jwks_fetch_timeout_ms))
            .build()?;
        Ok(Self { http, oidc, client, state: Mutex::new(State::default()) })
    }

    /// Fetches the first token in the background, so the first call to another service does not
    /// pay for discovery and the grant inside its own deadline. A failure is only logged: the
    /// next [`ServiceToken::bearer`] tries again.
    pub fn prefetch(self: &std::sync::Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(err) = this.bearer().await {
                tracing::warn!(error = %format!("{err:#}"), client_id = %this.client.client_id, "service token prefetch failed; retried on first use");
            }
        });
    }

    /// A valid access token, from the cache unless it is about to expire.
    pub async fn bearer(&self) -> anyhow::Result<Secret> {
        let mut state = self.state.lock().await;
        if let Some(h) = state.held.as_ref().filter(|h| Instant::now() < h.renew_at) {
            return Ok(h.token.clone());
        }
        let metadata = match state.metadata.clone() {
            Some(metadata) => metadata,
            None => {
                let found =
                    discovery::provider_metadata(&self.http, self.oidc.discovery_base(), &self.oidc.accepted_issuers()).await?;
                state.metadata = Some(found.clone());
                found
            }
        };
        match self.fetch(metadata).await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                state.held = Some(fresh);
                Ok(token)
            }
            Err(err) => {
                // The realm may have moved: discover again next time.
                state.metadata = None;
                Self::still_valid(&mut state, err)
            }
        }
    }

    /// After a failed renewal: the held token while it has not expired (tried again after
    /// [`RETRY_RENEWAL`]), else the failure.
    fn still_valid(state: &mut State, err: anyhow::Error) -> anyhow::Result<Secret> {
        let now = Instant::now();
        match state.held.as_mut().filter(|h| now < h.expires_at) {
            Some(held) => {
                tracing::warn!(error = %format!("{err:#}"), expires_in_ms = (held.expires_at - now).as_millis() as u64,
                    "service token renewal failed; using the held token until it expires");
                held.renew_at = (now + RETRY_RENEWAL).min(held.expires_at);
                Ok(held.token.clone())
            }
            None => Err(err),
        }
    }

    /// Drops the cached token if it is still `rejected` (the callee refused it): callers that
    /// saw the same refusal do not throw away the token the first of them fetched since.
    pub async fn forget(&self, rejected: &Secret) {
        let mut state = self.state.lock().await;
        if state.held.as_ref().is_some_and(|h| h.token == *rejected) {
            state.held = None;
        }
    }

    async fn fetch(&self, metadata: CoreProviderMetadata) -> anyhow::Result<Held> {
        // The token's life starts at the realm, after this moment.
        let asked = Instant::now();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.client.client_id.clone()),
            Some(ClientSecret::new(self.client.client_secret.expose().to_owned())),
        );
        let response = client
            .exchange_client_credentials()
            .context("the realm announces no token endpoint")?
            .request_async(&self.http)
            .await
            .map_err(|e| anyhow::anyhow!("client_credentials request failed: {}", describe(&e)))?;
        let lifetime = response.expires_in().unwrap_or(Duration::from_secs(60));
        let renew_in = lifetime.saturating_sub(RENEW_BEFORE.min(lifetime / 4));
        tracing::debug!(client_id = %self.client.client_id, lifetime_secs = lifetime.as_secs(), "service token fetched");
        Ok(Held {
            token: Secret::new(response.access_token().secret().clone()),
            renew_at: asked + renew_in,
            expires_at: asked + lifetime,
        })
    }
}

/// The failure without the request or response body (which could echo credentials).
fn describe<RE: std::error::Error + 'static, T: openidconnect::ErrorResponse>(
    err: &openidconnect::RequestTokenError<RE, T>,
) -> String {
    use openidconnect::RequestTokenError::*;
    match err {
        ServerResponse(response) => format!("refused by the realm ({response})"),
        Request(_) => "the realm could not be reached".into(),
        Parse(..) => "the realm's answer could not be read".into(),
        Other(_) => "unexpected answer".into(),
    }
}
