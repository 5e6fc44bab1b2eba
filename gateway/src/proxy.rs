//! Forwarding to a backend: `/api` stripped, bodies streamed both ways, hop-by-hop headers
//! dropped, `X-Forwarded-*` and `x-request-id` set, `traceparent` (set by the pipeline) carried, the bearer token forwarded;
//! bounded connect and response times, and a response body that stalls longer than the response
//! timeout between two chunks is cut (the client sees the connection end, never a hang). The
//! forwarding headers are [`crate::forwarded`]'s.

use std::{
    future::Future,
    pin::Pin,
    task::{self, ready, Poll},
    time::Duration,
};

use anyhow::Context;
use axum::{
    body::{Body, Bytes},
    extract::Request,
    http::{header, uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Uri},
    response::Response,
};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::time::Sleep;

use crate::{
    forwarded::{self, Peer},
    Error,
};

/// The largest document [`Proxy::fetch_json`] reads.
const MAX_DOCUMENT: usize = 2 << 20;

/// The prefix clients use and backends never see.
pub const API_PREFIX: &str = "/api";

/// Headers meaningful for one connection only (RFC 9110 §7.6.1), never forwarded.
/// (Named once: a header given by its text is parsed again at every use.)
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub use common::telemetry::TRACEPARENT;
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// How long an idle upstream connection is kept: shorter than the services' drain on shutdown
/// (`SHUTDOWN_DRAIN_MS`, 3 s in the chart), so a connection is never reused just as a stopping
/// replica closes it: it either carries a request during the drain (and is told to close) or
/// has already been dropped here.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(2);

/// A pool of backend connections. Clones share the pool; [`Proxy::own_pool`] makes a new one.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Proxy {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(UPSTREAM_IDLE).build(connector);
        Self { client, connect_timeout, response_timeout }
    }

    /// The same settings with a pool of its own. A pooled connection is driven by a task of the
    /// runtime that opened it; a server thread with its own pool never hands a request to
    /// another thread.
    pub fn own_pool(&self) -> Self {
        Self::new(self.connect_timeout, self.response_timeout)
    }

    /// Sends `req` to `base` (scheme + authority) and streams the answer back.
    pub async fn forward(&self, base: &Uri, mut req: Request, client: Peer, request_id: &HeaderValue) -> Result<Response, Error> {
        let uri = upstream_uri(base, req.uri()).map_err(Error::UpstreamFailed)?;
        let original_host = req.headers().get(header::HOST).cloned();
        let headers = req.headers_mut();
        // What the gateway forwards on purpose goes on even if the caller named it hop-by-hop: the
        // pipeline's trace context, and the token it verified (which the service checks again).
        let traceparent = headers.remove(&TRACEPARENT);
        let authorization = headers.remove(header::AUTHORIZATION);
        strip_hop_by_hop(headers);
        if let Some(traceparent) = traceparent {
            headers.insert(TRACEPARENT.clone(), traceparent);
        }
        if let Some(authorization) = authorization {
            headers.insert(header::AUTHORIZATION, authorization);
        }
        headers.remove(header::HOST);
        forwarded::set(headers, client, original_host);
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        *req.uri_mut() = uri;

        let response = match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => return Err(Error::UpstreamTimeout),
            Ok(Err(err)) if err.is_connect() => {
                tracing::warn!(error = %err, "backend unreachable");
                return Err(Error::UpstreamUnavailable);
            }
            Ok(Err(err)) => return Err(Error::UpstreamFailed(anyhow::Error::new(err))),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        Ok(Response::from_parts(parts, Body::new(Relayed::new(body, self.response_timeout))))
    }
}

pin_project_lite::pin_project! {
    /// A backend's answer body, passed on frame by frame. Its length and its end stay known to the
    /// server, which can finish the answer as soon as the last frame is in (without waiting for
    /// the backend's connection to say the body is over). The server never waits longer than
    /// `limit` for a frame (time spent writing to a slow client does not count against the
    /// backend); a stalled backend ends the body with an error, which closes the client's
    /// connection mid-body. HTTP/1 trailers are dropped.
    struct Relayed {
        inner: Incoming,
        limit: Duration,
        // Armed while the server waits for a frame.
        #[pin]
        stall: Option<Sleep>,
    }
}

impl Relayed {
    fn new(inner: Incoming, limit: Duration) -> Self {
        Self { inner, limit, stall: None }
    }
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        loop {
            match Pin::new(&mut *this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.stall.set(None);
                    if frame.is_data() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(axum::Error::new(err)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if this.stall.is_none() {
                        this.stall.set(Some(tokio::time::sleep(*this.limit)));
                    }
                    if let Some(stall) = this.stall.as_mut().as_pin_mut() {
                        ready!(stall.poll(cx));
                    }
                    tracing::warn!("backend stalled mid-body; response cut");
                    let stalled = std::io::Error::new(std::io::ErrorKind::TimedOut, "backend stalled mid-body");
                    return Poll::Ready(Some(Err(axum::Error::new(stalled))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Proxy {
    /// A small JSON document from a backend (its API description), at most [`MAX_DOCUMENT`]
    /// bytes, within the response timeout.
    pub async fn fetch_json(&self, uri: Uri) -> anyhow::Result<serde_json::Value> {
        let request = Request::get(uri).body(Body::empty()).context("invalid request")?;
        let response = tokio::time::timeout(self.response_timeout, self.client.request(request))
            .await
            .context("timed out")?
            .context("request failed")?;
        anyhow::ensure!(response.status().is_success(), "status {}", response.status());
        let json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        anyhow::ensure!(json, "not application/json");
        let limited = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT);
        let body = tokio::time::timeout(self.response_timeout, http_body_util::BodyExt::collect(limited))
            .await
            .context("timed out")?
            .map_err(|e| anyhow::anyhow!("body failed: {e}"))?;
        serde_json::from_slice(&body.to_bytes()).context("not JSON")
    }
}

/// `base` + the request's path without `/api` + its query (one copy of the path, no formatting).
fn upstream_uri(base: &Uri, original: &Uri) -> anyhow::Result<Uri> {
    let full = original.path_and_query().map_or("/", PathAndQuery::as_str);
    let rest = full.strip_prefix(API_PREFIX).filter(|r| r.starts_with('/')).unwrap_or(full);
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(rest).context("invalid upstream path")?);
    Uri::from_parts(parts).context("invalid upstream URI")
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::try_from(n.trim()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A new W3C trace context (version 00, sampled) for requests that arrive without one.
/// (uuid's `fast-rng`: a thread-local CSPRNG, not one `getrandom` syscall per id.)
pub fn new_traceparent() -> HeaderValue {
    // Random (version 4 UUIDs); each half holds fixed version or variant bits, so neither id is
    // ever all zero.
    traceparent_of(uuid::Uuid::new_v4().as_u128(), uuid::Uuid::new_v4().as_u64_pair().0)
}

/// `00-<trace, 32 hex digits>-<span, 16 hex digits>-01`, written digit by digit (no formatting
/// machinery on the request path).
fn traceparent_of(trace: u128, span: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for (i, digit) in value[3..35].iter_mut().enumerate() {
        *digit = HEX[((trace >> (124 - 4 * i)) & 0xf) as usize];
    }
    for (i, digit) in value[36..52].iter_mut().enumerate() {
        *digit = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&value).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_api_prefix_and_keeps_the_query() {
        let base: Uri = "http://127.0.0.1:4000".parse().unwrap();
        let uri = upstream_uri(&base, &"/api/patients?page=1&size=5".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:4000/patients?page=1&size=5");
    }

    #[test]
    fn drops_hop_by_hop_headers_including_those_named_by_connection() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["authorization"]);
    }

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let tp = new_traceparent();
        let parts: Vec<&str> = tp.to_str().unwrap().split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 32, 16, 2]);
        assert_eq!(common::telemetry::trace_id(&HeaderMap::from_iter([(TRACEPARENT.clone(), tp.clone())])), Some(parts[1]));
        assert_ne!(new_traceparent(), tp, "each call is a new trace");
        let (trace, span) = (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128, 0x0f1e_2d3c_4b5a_6978_u64);
        assert_eq!(traceparent_of(trace, span), format!("00-{trace:032x}-{span:016x}-01").as_str());
    }
}
