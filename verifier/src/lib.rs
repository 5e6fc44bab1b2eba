//! verifier: how the platform decides who is calling. One crate, so that a token is judged by
//! the same rules wherever it arrives: the gateway uses it today, the services behind it are
//! meant to re-verify with it (SPEC §10).
//!
//! - [`jwks::KeyStore`]: the realm's signing keys, discovered and cached by `kid`.
//! - [`Verifier`]: RS256 pinned (aws-lc), `exp`/`nbf`/`iss`/`aud`, roles; a bounded cache of
//!   already verified tokens so a repeated token costs a hash and a lookup.

pub mod cache;
pub mod jwks;
pub mod metrics;
mod token;

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
}
