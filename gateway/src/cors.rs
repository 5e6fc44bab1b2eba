//! CORS for the browser clients (SPEC §13): origins from configuration, written as Keycloak
//! writes a client's web origins (`http://localhost:*` allows any port). Preflight requests are
//! answered here, without a token, and never reach a backend. An `OPTIONS` that is no preflight
//! meets the routes like any other method (405 with `Allow`, or 404).

use std::{
    fmt,
    str::FromStr,
    task::{Context, Poll},
    time::Duration,
};

use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response};
use futures::future::Either;
use tower::{Layer, Service};
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
    pub fn layer(&self) -> Cors {
        let origins = self.clone();
        Cors(
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
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// tower-http's CORS layer, given preflights only: it answers every `OPTIONS` as a preflight
/// (200 on any path, even one that does not exist), so an `OPTIONS` without `Origin` and
/// `Access-Control-Request-Method` goes past it to the routes.
#[derive(Debug, Clone)]
pub struct Cors(CorsLayer);

/// A CORS preflight (Fetch standard): `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl<S: Clone> Layer<S> for Cors {
    type Service = CorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorsService { cors: self.0.layer(inner.clone()), plain: inner }
    }
}

/// See [`Cors`].
#[derive(Debug, Clone)]
pub struct CorsService<S> {
    cors: tower_http::cors::Cors<S>,
    plain: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CorsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<<tower_http::cors::Cors<S> as Service<Request<ReqBody>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Either may take the next request: both must be ready.
        match self.plain.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.cors.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if req.method() == Method::OPTIONS && !is_preflight(&req) {
            Either::Right(self.plain.call(req))
        } else {
            Either::Left(self.cors.call(req))
        }
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
