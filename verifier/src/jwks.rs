//! The realm's signing keys: discovered from the issuer, fetched from its JWKS, cached by `kid`.
//!
//! - Known `kid`: served from the cache, no I/O, no lock.
//! - Unknown `kid`: ONE shared refetch (single flight behind a mutex, at most one per
//!   `min_refetch`). Inside that cooldown an unknown `kid` is rejected at once, nobody sleeps
//!   holding the lock. A `kid` still unknown after a SUCCESSFUL fetch is remembered as unknown
//!   for a while, so a flood of forged key ids cannot turn into a flood of fetches; a failed
//!   fetch proves nothing about the `kid` and is not remembered against it.
//! - A failed fetch never drops keys: tokens keep verifying while Keycloak is down. A `kid` we
//!   could not look up because the realm did not answer is [`KeyLookup::Unavailable`] (503 and
//!   retry), never "unknown" (401): an outage of the realm must not tell clients their token is bad.
//! - A key the realm stops publishing is dropped together with every token it verified.
//! - Keys are parsed once, when fetched; an unchanged key keeps its parsed form across refreshes.
//! - Entries the gateway cannot use (`use: enc`, other key types or algorithms) are skipped one
//!   by one instead of failing the whole set.
//! - A fetch's connection is closed when the fetch ends, never kept for the next one. A pooled
//!   connection is driven by the runtime that opened it, and the gateway serves on several, one
//!   per thread: a later fetch from elsewhere on it would fail if that runtime stopped first.
//!   Fetches are rare (the periodic refresh, at most one unknown `kid` per cooldown), so one
//!   connection per fetch costs nothing that matters.

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::{sync::Mutex, time::Instant};

use common::metrics::Registry;

use crate::{
    cache::TokenCache,
    discovery,
    metrics::{JWKS_FETCH_FAILURE, JWKS_FETCH_SUCCESS},
};

/// A verification key and the one algorithm it may be used with, parsed once when fetched.
pub struct VerifyKey {
    /// The key in aws-lc's parsed form: signatures are checked with it directly, so no request
    /// rebuilds the RSA key from its components.
    pub parsed: ParsedPublicKey,
    /// The same key for jsonwebtoken's claim checks.
    pub key: DecodingKey,
    pub algorithm: Algorithm,
    /// The published key material (`n`, `e`), to tell an unchanged key from a replaced one.
    material: (String, String),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// Knobs of the key store.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Base URL of the realm for discovery (`<url>/.well-known/openid-configuration`).
    pub discovery_url: String,
    /// The `issuer` the discovery document must announce.
    pub expected_issuers: Vec<String>,
    /// Algorithms a key may be published for; entries for others are skipped.
    pub algorithms: Vec<Algorithm>,
    /// Cooldown between two fetches triggered by unknown key ids.
    pub min_refetch: Duration,
    /// How long a key id stays "unknown" after a successful fetch did not have it.
    pub negative_ttl: Duration,
    /// Bound of one discovery or JWKS request, and of waiting for a fetch in flight.
    pub fetch_timeout: Duration,
}

#[derive(Default)]
struct FetchState {
    jwks_uri: Option<String>,
    /// When the last fetch started, and whether it succeeded.
    last_attempt: Option<(Instant, bool)>,
}

/// Why [`KeyStore::key_for`] has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookup {
    /// The realm's current key set does not have it.
    Unknown,
    /// The key set could not be fetched (the realm is down or slow): nothing is known.
    Unavailable,
}

pub struct KeyStore {
    http: reqwest::Client,
    settings: JwksSettings,
    keys: moka::sync::Cache<String, Arc<VerifyKey>>,
    unknown: moka::sync::Cache<String, ()>,
    fetch: Mutex<FetchState>,
    /// Tokens verified with our keys; cleared per key when the realm stops publishing it. The
    /// verifier reads the same cache ([`KeyStore::tokens`]), so the two can never diverge.
    tokens: Arc<TokenCache>,
    metrics: Arc<Registry>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl KeyStore {
    pub fn new(settings: JwksSettings, tokens: Arc<TokenCache>, metrics: Arc<Registry>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(settings.fetch_timeout).pool_max_idle_per_host(0).build()?;
        Ok(Self {
            http,
            keys: moka::sync::Cache::builder().max_capacity(256).build(),
            unknown: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(settings.negative_ttl).build(),
            settings,
            fetch: Mutex::new(FetchState::default()),
            tokens,
            metrics,
        })
    }

    /// The cache of tokens verified with this store's keys.
    pub fn tokens(&self) -> &Arc<TokenCache> {
        &self.tokens
    }

    /// The key currently trusted under `kid`, without any I/O.
    pub fn cached(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys.get(kid)
    }

    /// Number of usable keys held.
    pub fn len(&self) -> u64 {
        self.keys.run_pending_tasks();
        self.keys.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for `kid`, refetching the JWKS once (shared by all waiters) when it is unknown.
    pub async fn key_for(&self, kid: &str) -> Result<Arc<VerifyKey>, KeyLookup> {
        if let Some(key) = self.keys.get(kid) {
            return Ok(key);
        }
        if self.unknown.contains_key(kid) {
            return Err(KeyLookup::Unknown);
        }
        // Single flight: wait for a fetch in progress (bounded), then decide.
        let mut state =
            tokio::time::timeout(self.settings.fetch_timeout, self.fetch.lock()).await.map_err(|_| KeyLookup::Unavailable)?;
        // Whoever held the lock before us may have fetched exactly this key.
        if let Some(key) = self.keys.get(kid) {
            return Ok(key);
        }
        if self.unknown.contains_key(kid) {
            return Err(KeyLookup::Unknown);
        }
        // Rate limit: inside the cooldown the answer is at once: "unknown" after a fetch that
        // succeeded without it, "unavailable" after one that failed.
        if let Some((_, ok)) = state.last_attempt.filter(|(at, _)| at.elapsed() < self.settings.min_refetch) {
            return Err(if ok { KeyLookup::Unknown } else { KeyLookup::Unavailable });
        }
        if self.refresh_locked(&mut state).await.is_err() {
            return Err(KeyLookup::Unavailable);
        }
        self.keys.get(kid).ok_or_else(|| {
            tracing::info!("token with an unknown key id rejected");
            self.unknown.insert(kid.to_owned(), ());
            KeyLookup::Unknown
        })
    }

    /// Refetches the JWKS now (the background refresh).
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let mut state = self.fetch.lock().await;
        self.refresh_locked(&mut state).await
    }

    async fn refresh_locked(&self, state: &mut FetchState) -> anyhow::Result<usize> {
        let started = Instant::now();
        let result = self.fetch_keys(state).await;
        state.last_attempt = Some((started, result.is_ok()));
        match &result {
            Ok(n) => {
                self.metrics.inc(JWKS_FETCH_SUCCESS);
                tracing::info!(keys = n, "JWKS refreshed");
            }
            Err(err) => {
                self.metrics.inc(JWKS_FETCH_FAILURE);
                tracing::warn!(error = %format!("{err:#}"), "JWKS refresh failed; keeping cached keys");
            }
        }
        result
    }

    async fn fetch_keys(&self, state: &mut FetchState) -> anyhow::Result<usize> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                state.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let set: Value = self.get_json(&jwks_uri, "JWKS").await?;
        let usable = parse_jwks(&set, &self.settings.algorithms);
        if usable.is_empty() {
            bail!("JWKS holds no usable signing key");
        }
        let fresh: HashSet<String> = usable.iter().map(|(kid, _)| kid.clone()).collect();
        for (kid, key) in usable {
            self.unknown.invalidate(&kid);
            match self.keys.get(&kid) {
                Some(held) if held.material == key.material && held.algorithm == key.algorithm => {}
                Some(_) => {
                    // Same kid, other key: what the old one verified is no longer proof.
                    self.tokens.forget_key(&kid);
                    self.keys.insert(kid, Arc::new(key));
                }
                None => self.keys.insert(kid, Arc::new(key)),
            }
        }
        // Keys the realm no longer publishes are no longer trusted, nor what they verified.
        for (kid, _) in self.keys.iter() {
            if !fresh.contains(kid.as_str()) {
                self.keys.invalidate(kid.as_str());
                self.tokens.forget_key(&kid);
            }
        }
        Ok(fresh.len())
    }

    /// OIDC discovery: the document must name one of our accepted issuers.
    async fn discover(&self) -> anyhow::Result<String> {
        let metadata =
            discovery::provider_metadata(&self.http, &self.settings.discovery_url, &self.settings.expected_issuers).await?;
        Ok(metadata.jwks_uri().url().to_string())
    }

    /// GET `url` as JSON; `what` names it in errors.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, what: &str) -> anyhow::Result<T> {
        let response = self.http.get(url).send().await.with_context(|| format!("{what} request failed"))?;
        let response = response.error_for_status().with_context(|| format!("{what} request refused"))?;
        response.json().await.with_context(|| format!("{what} is malformed"))
    }
}

/// The usable signing keys of a JWKS document, each entry judged on its own.
pub fn parse_jwks(set: &Value, algorithms: &[Algorithm]) -> Vec<(String, VerifyKey)> {
    let entries = set.get("keys").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .filter_map(|jwk| {
            let key = parse_jwk(jwk, algorithms);
            if key.is_none() {
                let kid = jwk.get("kid").and_then(|k| k.as_str());
                tracing::debug!(kid, "skipping unusable JWKS entry");
            }
            key
        })
        .collect()
}

fn parse_jwk(jwk: &Value, algorithms: &[Algorithm]) -> Option<(String, VerifyKey)> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if field("kty")? != "RSA" || field("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let algorithm = match field("alg") {
        Some(alg) => alg.parse::<Algorithm>().ok()?,
        None => Algorithm::RS256,
    };
    if !algorithms.contains(&algorithm) {
        return None;
    }
    let (n, e) = (field("n")?, field("e")?);
    let key = DecodingKey::from_rsa_components(n, e).ok()?;
    let components = RsaPublicKeyComponents { n: URL_SAFE_NO_PAD.decode(n).ok()?, e: URL_SAFE_NO_PAD.decode(e).ok()? };
    // Keys under 2048 bits could never verify (aws-lc refuses them at verification): skip them now.
    if components.n.iter().skip_while(|b| **b == 0).count() < MIN_RSA_MODULUS_BYTES {
        return None;
    }
    let parsed = components.to_parsed_public_key(rsa_parameters(algorithm)?).ok()?;
    Some((field("kid")?.to_owned(), VerifyKey { parsed, key, algorithm, material: (n.to_owned(), e.to_owned()) }))
}

/// 2048 bits, the smallest RSA key accepted.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// aws-lc's verification parameters for an RSA JWS algorithm (keys of 2048 bits and more).
fn rsa_parameters(algorithm: Algorithm) -> Option<&'static RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa(kid: &str, alg: &str, use_: &str) -> Value {
        static KEY: std::sync::OnceLock<dev_stack::tokens::TestKey> = std::sync::OnceLock::new();
        let n = &KEY.get_or_init(dev_stack::tokens::TestKey::generate).n;
        json!({"kid": kid, "kty": "RSA", "alg": alg, "use": use_, "n": n, "e": "AQAB"})
    }

    #[test]
    fn keeps_rs256_signing_keys_and_skips_the_rest_one_by_one() {
        let set = json!({"keys": [
            rsa("sig-1", "RS256", "sig"),
            rsa("enc-1", "RSA-OAEP", "enc"),
            rsa("hs", "HS256", "sig"),
            {"kid": "ec", "kty": "EC", "alg": "ES256", "crv": "P-256", "x": "a", "y": "b"},
            {"kid": "broken", "kty": "RSA"},
            {"kid": "tiny", "kty": "RSA", "alg": "RS256", "n": "sXch", "e": "AQAB"},
            "not even an object",
            rsa("sig-2", "RS256", "sig"),
        ]});
        let kids: Vec<String> = parse_jwks(&set, &[Algorithm::RS256]).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kids, ["sig-1", "sig-2"]);
    }

    #[test]
    fn pinned_algorithms_exclude_other_rsa_algorithms() {
        let set = json!({"keys": [rsa("ps", "PS256", "sig"), rsa("rs512", "RS512", "sig")]});
        assert!(parse_jwks(&set, &[Algorithm::RS256]).is_empty());
    }

    #[test]
    fn a_document_without_keys_yields_nothing() {
        assert!(parse_jwks(&json!({}), &[Algorithm::RS256]).is_empty());
    }
}
