//! Bearer token verification: RS256 pinned, signature by a key from the realm's JWKS, `exp`,
//! `nbf`, `iss` (one of several accepted), `aud`; roles from `realm_access` and the configured
//! clients' `resource_access`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use axum::http::{header, HeaderMap};
use jsonwebtoken::{decode, decode_header, Algorithm, Validation};
use serde::Deserialize;

use crate::{jwks::KeyStore, Error};

/// Who is calling, once the token passed every check.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub roles: HashSet<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Access {
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    realm_access: Option<Access>,
    #[serde(default)]
    resource_access: HashMap<String, Access>,
}

/// Checks tokens against the key store with fixed rules.
pub struct Verifier {
    keys: Arc<KeyStore>,
    validation: Validation,
    role_clients: Vec<String>,
    max_token_bytes: usize,
}

impl Verifier {
    pub fn new(
        keys: Arc<KeyStore>,
        algorithms: Vec<Algorithm>,
        issuers: &[String],
        audience: &str,
        leeway_secs: u64,
        role_clients: Vec<String>,
        max_token_bytes: usize,
    ) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(issuers);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Self { keys, validation, role_clients, max_token_bytes }
    }

    /// The caller behind the request's `Authorization: Bearer` header.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Principal, Error> {
        let token = bearer_token(headers)?;
        if token.len() > self.max_token_bytes {
            return Err(Error::InvalidToken("token too large"));
        }
        let header = decode_header(token).map_err(|_| Error::InvalidToken("malformed token"))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(Error::InvalidToken("algorithm not allowed"));
        }
        let kid = header.kid.as_deref().ok_or(Error::InvalidToken("token has no key id"))?;
        let key = self.keys.key_for(kid).await.ok_or(Error::InvalidToken("unknown signing key"))?;
        if key.algorithm != header.alg {
            return Err(Error::InvalidToken("algorithm does not match the key"));
        }
        let data = decode::<Claims>(token, &key.key, &self.validation).map_err(|e| Error::InvalidToken(reason(&e)))?;
        Ok(self.principal(data.claims))
    }

    fn principal(&self, claims: Claims) -> Principal {
        let realm = claims.realm_access.unwrap_or_default().roles;
        let clients = self
            .role_clients
            .iter()
            .filter_map(|c| claims.resource_access.get(c))
            .flat_map(|a| a.roles.iter().cloned());
        Principal { subject: claims.sub.unwrap_or_default(), roles: realm.into_iter().chain(clients).collect() }
    }
}

/// `Authorization: Bearer <token>` (scheme case-insensitive); anything else is no credentials.
fn bearer_token(headers: &HeaderMap) -> Result<&str, Error> {
    let value = headers.get(header::AUTHORIZATION).ok_or(Error::MissingToken)?;
    let value = value.to_str().map_err(|_| Error::InvalidToken("malformed authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(Error::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::InvalidToken("empty token"));
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
    use axum::http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_others_count_as_missing() {
        assert_eq!(bearer_token(&with_auth("bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&with_auth("Bearer  abc ")).unwrap(), "abc");
        assert!(matches!(bearer_token(&with_auth("Basic dXNlcjpwdw==")), Err(Error::MissingToken)));
        assert!(matches!(bearer_token(&HeaderMap::new()), Err(Error::MissingToken)));
        assert!(matches!(bearer_token(&with_auth("Bearer ")), Err(Error::MissingToken | Error::InvalidToken(_))));
    }
}
