//! verifier: how the platform decides who is calling. One crate, so that a token is judged by
//! the same rules wherever it arrives: the gateway checks first, and every service behind it
//! checks again with the same verifier and the same access table (SPEC §10).
//!
//! - [`jwks::KeyStore`]: the realm's signing keys, discovered and cached by `kid`.
//! - [`Verifier`]: RS256 pinned (aws-lc), `typ` = `Bearer`, `exp`/`nbf`/`iss`/`aud`, roles; a
//!   bounded cache of already verified tokens so a repeated token costs a hash and a lookup.
//! - [`access`]: which roles each route needs; [`web`]: challenges and the axum middleware.
//! - [`settings::OidcArgs`]: the shared settings and start-up of all of the above.
//! - [`client::ServiceToken`]: this service's own token for calling other services.

pub mod access;
pub mod cache;
pub mod client;
mod discovery;
pub mod grpc;
pub mod jwks;
pub mod metrics;
pub mod settings;
mod token;
pub mod web;

pub use jsonwebtoken::Algorithm;
pub use token::{bearer_token, Principal, Verifier, VerifierSettings};

/// Why a request carries no acceptable identity. The texts are safe to show to clients: they
/// name the failed check, never the token's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer credentials at all (RFC 6750 §3.1: challenge without an error code).
    #[error("a bearer token is required")]
    MissingToken,
    /// Credentials present but unacceptable.
    #[error("the access token is invalid: {0}")]
    InvalidToken(&'static str),
    /// The request's credentials are ambiguous (RFC 6750 `invalid_request`: 400), e.g. two
    /// `Authorization` headers: which one would a later hop read?
    #[error("malformed credentials: {0}")]
    InvalidRequest(&'static str),
    /// The token names a signing key we do not hold and the realm cannot be asked right now:
    /// nothing is known about the token (503, retry), it is not declared invalid.
    #[error("the identity provider's signing keys are unavailable; retry later")]
    KeysUnavailable,
}
