//! Bearer token verification: RS256 pinned, signature by a key from the realm's JWKS, `exp`,
//! `nbf`, `iss` (one of several accepted), `aud`; roles from `realm_access` and the configured
//! clients' `resource_access`. A token that passed once is served from the [`TokenCache`].

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::metrics::Registry;
use http::{header, HeaderMap};
use jsonwebtoken::{decode, decode_header, Algorithm, Validation};
use serde::Deserialize;

use crate::{
    cache::{CachedToken, TokenCache},
    jwks::{KeyLookup, KeyStore, VerifyKey},
    metrics::{TOKEN_CACHE_HIT, TOKEN_CACHE_MISS},
    AuthError,
};

/// Who is calling, once the token passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`: Keycloak's opaque user (or service account) id.
    pub subject: String,
    /// `azp`: the client the token was issued to.
    pub client: Option<String>,
    /// Realm roles and the roles of the configured clients.
    pub roles: HashSet<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Access {
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    /// Keycloak marks access tokens `Bearer` (ID tokens `ID`, refresh tokens `Refresh`).
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    realm_access: Option<Access>,
    #[serde(default)]
    resource_access: HashMap<String, Access>,
}

/// The fixed rules a token is judged by.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    /// Accepted signature algorithms (pinned; RS256 by default).
    pub algorithms: Vec<Algorithm>,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp` / `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Clients whose `resource_access.<client>.roles` count besides realm roles.
    pub role_clients: Vec<String>,
    /// Longest accepted token; longer ones are rejected before any parsing.
    pub max_token_bytes: usize,
}

/// Checks tokens against the key store with fixed rules.
pub struct Verifier {
    keys: Arc<KeyStore>,
    cache: Arc<TokenCache>,
    /// The claim checks, run after the signature was checked with the parsed key.
    validation: Validation,
    role_clients: Vec<String>,
    max_token_bytes: usize,
    metrics: Arc<Registry>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("role_clients", &self.role_clients).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier over `keys`, caching verified tokens in the key store's cache.
    pub fn new(keys: Arc<KeyStore>, settings: VerifierSettings, metrics: Arc<Registry>) -> Self {
        let cache = keys.tokens().clone();
        let mut validation = Validation::new(settings.algorithms[0]);
        validation.algorithms = settings.algorithms;
        validation.leeway = settings.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&settings.issuers);
        validation.set_audience(&[settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // The signature is checked before `decode` runs, with the key aws-lc parsed once (see
        // `check`); `decode` then checks the claims only. (Deprecated to keep people from skipping
        // signatures; we do not skip it, we do it first and without re-parsing the key.)
        #[allow(deprecated)]
        validation.insecure_disable_signature_validation();
        Self { keys, cache, validation, role_clients: settings.role_clients, max_token_bytes: settings.max_token_bytes, metrics }
    }

    /// The caller behind the request's `Authorization: Bearer` header.
    pub async fn verify_headers(&self, headers: &HeaderMap) -> Result<Arc<Principal>, AuthError> {
        self.verify(bearer_token(headers)?).await
    }

    /// The caller a compact JWT proves.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::InvalidToken("token too large"));
        }
        let hash = TokenCache::hash(token);
        if let Some(hit) = self.cache.get(&hash) {
            // Still the key that verified it (not removed, not replaced under the same kid)?
            if self.keys.cached(&hit.kid).is_some_and(|k| Arc::ptr_eq(&k, &hit.key)) {
                self.metrics.inc(TOKEN_CACHE_HIT);
                return Ok(hit.principal.clone());
            }
        }
        self.metrics.inc(TOKEN_CACHE_MISS);
        let header = decode_header(token).map_err(|_| AuthError::InvalidToken("malformed token"))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidToken("algorithm not allowed"));
        }
        let kid = header.kid.ok_or(AuthError::InvalidToken("token has no key id"))?;
        let key = self.keys.key_for(&kid).await.map_err(|why| match why {
            KeyLookup::Unknown => AuthError::InvalidToken("unknown signing key"),
            KeyLookup::Unavailable => AuthError::KeysUnavailable,
        })?;
        if key.algorithm != header.alg {
            return Err(AuthError::InvalidToken("algorithm does not match the key"));
        }
        let (principal, exp) = self.check(token, &key)?;
        let principal = Arc::new(principal);
        self.cache.insert(hash, CachedToken { principal: principal.clone(), kid, key, exp });
        Ok(principal)
    }

    /// The principal `token` proves with `key`, and its `exp`: signature by the parsed key, then
    /// the claims. No cache, no key lookup, and no check that the header's `alg` and `kid` match
    /// `key`: [`Verifier::verify`] does those; this is its last step (and the micro-benchmark's
    /// cold path).
    pub fn check(&self, token: &str, key: &VerifyKey) -> Result<(Principal, u64), AuthError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(AuthError::InvalidToken("malformed token"))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::InvalidToken("malformed token"))?;
        key.parsed.verify_sig(signed.as_bytes(), &signature).map_err(|_| AuthError::InvalidToken("signature invalid"))?;
        let claims = decode::<Claims>(token, &key.key, &self.validation).map_err(|e| AuthError::InvalidToken(reason(&e)))?.claims;
        if claims.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(AuthError::InvalidToken("not an access token"));
        }
        let exp = claims.exp;
        Ok((self.principal(claims), exp))
    }

    fn principal(&self, claims: Claims) -> Principal {
        let realm = claims.realm_access.unwrap_or_default().roles;
        let clients =
            self.role_clients.iter().filter_map(|c| claims.resource_access.get(c)).flat_map(|a| a.roles.iter().cloned());
        Principal {
            subject: claims.sub.unwrap_or_default(),
            client: claims.azp,
            roles: realm.into_iter().chain(clients).collect(),
        }
    }
}

/// The `typ` claim of an access token.
const ACCESS_TOKEN_TYP: &str = "Bearer";

/// `Authorization: Bearer <token>` (scheme case-insensitive); anything else is no credentials.
/// More than one `Authorization` header is refused: the token verified must be the only one a
/// later hop can read.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next().ok_or(AuthError::MissingToken)?;
    if all.next().is_some() {
        return Err(AuthError::InvalidRequest("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| AuthError::InvalidToken("malformed authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::InvalidToken("empty token"));
    }
    Ok(token)
}

/// A client-safe name for the check that failed.
fn reason(err: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind::*;
    match err.kind() {
        ExpiredSignature => "token expired",
        ImmatureSignature => "token not yet valid",
        InvalidIssuer => "issuer not accepted",
        InvalidAudience => "audience not accepted",
        InvalidSignature => "signature invalid",
        MissingRequiredClaim(_) => "required claim missing",
        InvalidAlgorithm => "algorithm not allowed",
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_others_count_as_missing() {
        assert_eq!(bearer_token(&with_auth("bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&with_auth("Bearer  abc ")).unwrap(), "abc");
        assert_eq!(bearer_token(&with_auth("Basic dXNlcjpwdw==")), Err(AuthError::MissingToken));
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthError::MissingToken));
        assert!(matches!(bearer_token(&with_auth("Bearer ")), Err(AuthError::MissingToken | AuthError::InvalidToken(_))));
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut h = with_auth("Bearer first");
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer second"));
        assert!(matches!(bearer_token(&h), Err(AuthError::InvalidRequest(_))));
    }
}
