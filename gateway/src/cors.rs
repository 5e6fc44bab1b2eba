//! CORS for the browser clients (SPEC §13): origins from configuration, written as Keycloak
//! writes a client's web origins (`http://localhost:*` allows any port). Preflight requests are
//! answered here, without a token, and never reach a backend.

use std::{fmt, str::FromStr, time::Duration};

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::limit::{RATELIMIT, RATELIMIT_POLICY};

/// Allowed origins, comma-separated: exact (`https://app.example.org`) or with any port
/// (`http://localhost:*`). Empty: no cross-origin access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins(Vec<String>);

impl FromStr for Origins {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let origins: Vec<String> = s.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
        let bad = |o: &&String| {
            let host = o.strip_suffix(":*").unwrap_or(o);
            !(o.starts_with("http://") || o.starts_with("https://")) || host.ends_with('/') || host.contains('*')
        };
        match origins.iter().find(bad) {
            Some(bad) => Err(format!("`{bad}` is not an origin (scheme://host[:port|:*])")),
            None => Ok(Self(origins)),
        }
    }
}

impl fmt::Display for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl Origins {
    fn allows(&self, origin: &[u8]) -> bool {
        self.0.iter().any(|allowed| match allowed.strip_suffix(":*").map(|host| (host, ":")) {
            Some((host, colon)) => origin
                .strip_prefix(host.as_bytes())
                .and_then(|rest| rest.strip_prefix(colon.as_bytes()))
                .is_some_and(|port| !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)),
            None => allowed.as_bytes() == origin,
        })
    }

    /// The layer answering preflights and adding `Access-Control-*` to responses.
    pub fn layer(&self) -> CorsLayer {
        let origins = self.clone();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| origins.allows(origin.as_bytes())))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                header::LOCATION,
                header::LINK,
                header::ETAG,
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                HeaderName::from_static("x-total-count"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("idempotent-replayed"),
                RATELIMIT.clone(),
                RATELIMIT_POLICY.clone(),
            ])
            .max_age(Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_any_port_origins() {
        let o: Origins = "http://localhost:*, https://app.example.org".parse().unwrap();
        for ok in ["http://localhost:3000", "http://localhost:1", "https://app.example.org"] {
            assert!(o.allows(ok.as_bytes()), "{ok}");
        }
        for no in [
            "http://localhost",
            "http://localhost:",
            "http://localhost:3000.evil.org",
            "http://localhost:30000000",
            "https://localhost:3000",
            "https://app.example.org.evil.org",
            "null",
        ] {
            assert!(!o.allows(no.as_bytes()), "{no}");
        }
        assert!("localhost:*".parse::<Origins>().is_err());
        assert!("http://a.org/".parse::<Origins>().is_err());
        assert!("https://app.example.org*".parse::<Origins>().is_err(), "a wildcard only as :*");
        assert!("https://*.example.org".parse::<Origins>().is_err());
        assert!(!"".parse::<Origins>().unwrap().allows(b"http://localhost:1"));
    }
}
