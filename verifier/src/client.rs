//! The service's own identity towards other services (SPEC §10): an access token from the
//! realm by `client_credentials` (through `openidconnect`'s client), cached and renewed shortly
//! before it expires. The renewal runs in the background: while the held token is valid no
//! caller waits for the realm, so a realm that is slow, restarting or down costs nothing until
//! the token actually expires (a failed renewal is tried again a second later). Only a caller
//! with no valid token waits for a fetch, shared with the callers that arrive meanwhile. The
//! token and the secret never reach a log.

use std::sync::{Arc, Mutex as SyncMutex};
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

/// Renewed when less than this is left (or a quarter of the lifetime, if that is less).
const RENEW_BEFORE: Duration = Duration::from_secs(30);
/// After a renewal started, the next one is not started before this much later.
const RETRY_RENEWAL: Duration = Duration::from_secs(1);

struct Held {
    token: Secret,
    renew_at: Instant,
    expires_at: Instant,
}

/// What [`ServiceToken::held`] found.
enum Found {
    /// Valid, renewal not due.
    Fresh(Secret),
    /// Valid, and this caller is to start its renewal.
    Renew(Secret),
    /// No valid token.
    Nothing,
}

/// A cached client_credentials token.
pub struct ServiceToken {
    http: reqwest::Client,
    oidc: OidcArgs,
    client: ClientArgs,
    /// The token; read without waiting for a fetch.
    held: SyncMutex<Option<Held>>,
    /// One fetch at a time; it keeps the realm's metadata (discovered once, again after a
    /// failure: the realm may have moved).
    fetching: Mutex<Option<CoreProviderMetadata>>,
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
        Ok(Self { http, oidc, client, held: SyncMutex::new(None), fetching: Mutex::new(None) })
    }

    /// Fetches the first token in the background, so the first call to another service does not
    /// pay for discovery and the grant inside its own deadline. A failure is only logged: the
    /// next [`ServiceToken::bearer`] tries again.
    pub fn prefetch(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(err) = this.bearer().await {
                tracing::warn!(error = %format!("{err:#}"), client_id = %this.client.client_id, "service token prefetch failed; retried on first use");
            }
        });
    }

    /// A valid access token: the held one while it is valid (its renewal, when due, started in
    /// the background), else one fetched now.
    pub async fn bearer(self: &Arc<Self>) -> anyhow::Result<Secret> {
        match self.held(Instant::now()) {
            Found::Fresh(token) => return Ok(token),
            Found::Renew(token) => {
                let this = self.clone();
                tokio::spawn(async move {
                    // A fetch in flight stores a token or fails; the next caller due tries again.
                    let Ok(mut metadata) = this.fetching.try_lock() else { return };
                    if let Err(err) = this.renew(&mut metadata).await {
                        tracing::warn!(error = %format!("{err:#}"), client_id = %this.client.client_id,
                            "service token renewal failed; the held token serves until it expires");
                    }
                });
                return Ok(token);
            }
            Found::Nothing => {}
        }
        let mut metadata = self.fetching.lock().await;
        // The fetch this caller waited for may have brought one.
        if let Found::Fresh(token) | Found::Renew(token) = self.held(Instant::now()) {
            return Ok(token);
        }
        self.renew(&mut metadata).await
    }

    /// The held token, if valid at `now`; when its renewal is due, the caller is told to start it
    /// and the next renewal is not due before [`RETRY_RENEWAL`] has passed.
    fn held(&self, now: Instant) -> Found {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.as_mut() {
            Some(h) if now < h.renew_at => Found::Fresh(h.token.clone()),
            Some(h) if now < h.expires_at => {
                h.renew_at = (now + RETRY_RENEWAL).min(h.expires_at);
                Found::Renew(h.token.clone())
            }
            _ => Found::Nothing,
        }
    }

    /// Discovers the realm if needed and fetches a token, which is then held.
    async fn renew(&self, metadata: &mut Option<CoreProviderMetadata>) -> anyhow::Result<Secret> {
        let fetched = async {
            let found = match metadata.take() {
                Some(found) => found,
                None => {
                    discovery::provider_metadata(&self.http, self.oidc.discovery_base(), &self.oidc.accepted_issuers()).await?
                }
            };
            let fresh = self.fetch(found.clone()).await?;
            *metadata = Some(found);
            anyhow::Ok(fresh)
        }
        .await?;
        let token = fetched.token.clone();
        *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fetched);
        Ok(token)
    }

    /// Drops the held token if it is still `rejected` (the callee refused it): callers that saw
    /// the same refusal do not throw away a token fetched since.
    pub fn forget(&self, rejected: &Secret) {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.as_ref().is_some_and(|h| h.token == *rejected) {
            *held = None;
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
        // A day at most (renewing sooner is harmless), which keeps the arithmetic from overflowing.
        let lifetime = response.expires_in().unwrap_or(Duration::from_secs(60)).min(Duration::from_secs(86_400));
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
