//! Forwarding to a backend: `/api` stripped, bodies streamed both ways, hop-by-hop headers
//! dropped, `X-Forwarded-*` and `x-request-id` set, `traceparent` (set by the pipeline) carried, the bearer token forwarded;
//! bounded connect and response times, and a response body that stalls longer than the response
//! timeout between two chunks is cut (the client sees the connection end, never a hang).
//!
//! Forwarding headers a client wrote itself are believed only from a trusted proxy
//! ([`TrustedProxies`]); from anyone else they are replaced, so the chain a backend (and its
//! audit trail) sees starts at the address the gateway saw.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    str::FromStr,
    sync::Arc,
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
use ipnet::IpNet;

use tokio::time::Sleep;

use crate::Error;

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
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Whether a request header a client wrote claims who the client is or how it came, and is
/// dropped: headers of that kind the gateway does not write itself always (backends get
/// `X-Forwarded-*` only), and `X-Forwarded-Host`/`-Port` unless from a trusted proxy. (The
/// `X-Forwarded-*` the gateway always writes are overwritten anyway.) One pass over the names,
/// no lookup per header of the list.
fn is_dropped_claim(name: &HeaderName, trusted: bool) -> bool {
    match name.as_str() {
        "forwarded"
        | "x-real-ip"
        | "true-client-ip"
        | "x-client-ip"
        | "x-cluster-client-ip"
        | "cf-connecting-ip"
        | "x-original-forwarded-for" => true,
        "x-forwarded-host" | "x-forwarded-port" => !trusted,
        _ => false,
    }
}

/// How long an idle upstream connection is kept: shorter than the services' drain on shutdown
/// (`SHUTDOWN_DRAIN_MS`, 3 s in the chart), so a connection is never reused just as a stopping
/// replica closes it: it either carries a request during the drain (and is told to close) or
/// has already been dropped here.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(2);

/// The peers whose forwarding headers (`X-Forwarded-For`, `-Proto`, `-Host`, `-Port`) are
/// believed: proxies in front of the gateway, such as an ingress (`TRUSTED_PROXIES`: IP
/// addresses or CIDR ranges, comma-separated; none by default).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(trusted_range).collect::<Result<_, _>>().map(Self)
    }
}

/// One entry of `TRUSTED_PROXIES`: an address (a range of one) or a range; IPv4-mapped IPv6
/// taken as IPv4, as peers are compared.
fn trusted_range(entry: &str) -> Result<IpNet, String> {
    let net = match entry.parse::<IpNet>() {
        Ok(net) if net.trunc() != net => {
            return Err(format!("`{entry}` has bits set past its prefix length: did you mean {}?", net.trunc()))
        }
        Ok(net) => net,
        Err(_) => entry
            .parse::<IpAddr>()
            .map(|ip| IpNet::from(ip.to_canonical()))
            .map_err(|_| format!("`{entry}` is neither an IP address nor a CIDR range (e.g. 10.0.0.0/8)"))?,
    };
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("at most 32 bits")),
            None => net,
        },
        _ => net,
    })
}

/// The caller's end of a connection, worked out once per connection rather than once per
/// request: its `X-Forwarded-For` entry, and whether it is a trusted proxy.
#[derive(Clone, Debug)]
pub struct Peer {
    forwarded_for: HeaderValue,
    trusted: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted: &TrustedProxies) -> Self {
        // An IPv4 client of a dual-stack listener is named as IPv4, not `::ffff:a.b.c.d`.
        let ip = addr.ip().to_canonical();
        Self {
            forwarded_for: HeaderValue::from_str(&ip.to_string()).expect("an IP address is a header value"),
            trusted: trusted.contains(ip),
        }
    }
}

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
        // The pipeline's trace context goes on even if the caller named `traceparent` hop-by-hop.
        let traceparent = headers.remove(&TRACEPARENT);
        strip_hop_by_hop(headers);
        if let Some(traceparent) = traceparent {
            headers.insert(TRACEPARENT.clone(), traceparent);
        }
        headers.remove(header::HOST);
        set_forwarded(headers, client, original_host);
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

/// Sets the forwarding headers. From a trusted proxy, its `X-Forwarded-For` chain is extended
/// with the proxy's address and the protocol, host and port it reports are kept; from anyone
/// else, every forwarding header the client wrote is replaced or dropped ([`is_dropped_claim`]).
fn set_forwarded(headers: &mut HeaderMap, client: Peer, original_host: Option<HeaderValue>) {
    // No allocation unless there is something to drop.
    let dropped: Vec<HeaderName> = headers.keys().filter(|name| is_dropped_claim(name, client.trusted)).cloned().collect();
    for name in dropped {
        headers.remove(name);
    }
    if client.trusted {
        // A prior chain (one or several header lines) that is not visible ASCII is dropped, not extended.
        let prior: Option<Vec<&str>> = headers.get_all(&X_FORWARDED_FOR).iter().map(|v| v.to_str().ok()).collect();
        let chain = match prior {
            Some(prior) if !prior.is_empty() => {
                let mut chain = prior.join(", ");
                chain.push_str(", ");
                chain.push_str(client.forwarded_for.to_str().expect("an IP address is ASCII"));
                HeaderValue::from_maybe_shared(Bytes::from(chain)).unwrap_or_else(|_| client.forwarded_for.clone())
            }
            _ => client.forwarded_for,
        };
        headers.insert(X_FORWARDED_FOR.clone(), chain);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
        if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), original_host) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), client.forwarded_for);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    headers.insert(X_FORWARDED_PREFIX.clone(), HeaderValue::from_static(API_PREFIX));
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

    fn peer(addr: &str, trusted: &str) -> Peer {
        Peer::new(addr.parse().unwrap(), &trusted.parse().unwrap())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn a_client_that_is_not_a_trusted_proxy_cannot_name_another_client() {
        let mut h = headers(&[
            ("x-forwarded-for", "198.51.100.1, 198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "bank.example"),
            ("x-forwarded-port", "443"),
            ("x-real-ip", "198.51.100.3"),
            ("forwarded", "for=198.51.100.4"),
            ("true-client-ip", "198.51.100.6"),
            ("authorization", "Bearer t"),
        ]);
        h.append("x-forwarded-for", HeaderValue::from_static("198.51.100.5"));
        set_forwarded(&mut h, peer("10.1.2.3:5000", "10.1.2.4, 192.168.0.0/16"), None);
        assert_eq!(h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["10.1.2.3"]);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-prefix"], "/api");
        for dropped in ["x-forwarded-host", "x-forwarded-port", "x-real-ip", "forwarded", "true-client-ip"] {
            assert!(!h.contains_key(dropped), "{dropped} kept: {h:?}");
        }
        assert_eq!(h["authorization"], "Bearer t", "other headers are left alone");
        set_forwarded(&mut h, peer("[::1]:5000", ""), Some(HeaderValue::from_static("example.org")));
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-host"], "example.org", "the Host the client asked for");
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_extended_and_what_it_reports_kept() {
        let proxy = peer("192.168.7.9:5000", "10.1.2.4, 192.168.0.0/16");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, proxy.clone(), Some(HeaderValue::from_static("example.org")));
        assert_eq!(
            (&h["x-forwarded-for"], &h["x-forwarded-proto"]),
            (&"192.168.7.9".parse::<HeaderValue>().unwrap(), &HeaderValue::from_static("http"))
        );
        assert_eq!(h["x-forwarded-host"], "example.org");
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "clinic.example"),
            ("x-forwarded-port", "443"),
            ("forwarded", "for=198.51.100.4"),
            ("x-real-ip", "198.51.100.3"),
        ]);
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.8"));
        set_forwarded(&mut h, proxy.clone(), Some(HeaderValue::from_static("gateway.internal")));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 203.0.113.8, 192.168.7.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "clinic.example");
        assert_eq!(h["x-forwarded-port"], "443");
        assert!(
            !h.contains_key("forwarded") && !h.contains_key("x-real-ip"),
            "never passed on, the gateway does not extend them"
        );
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        set_forwarded(&mut h, peer("10.1.2.4:1", "10.1.2.4"), None);
        assert_eq!(h["x-forwarded-for"], "10.1.2.4", "a chain that is not ASCII is replaced");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        let t: TrustedProxies = " 10.0.0.0/8 ,192.168.1.7, fd00::/8,".parse().unwrap();
        for ip in ["10.200.0.1", "192.168.1.7", "fd00::1", "::ffff:10.0.0.1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.168.1.8", "fe80::1", "127.0.0.1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!"".parse::<TrustedProxies>().unwrap().contains("127.0.0.1".parse().unwrap()));
        assert!("10.1.2.3/40".parse::<TrustedProxies>().unwrap_err().contains("`10.1.2.3/40`"));
        assert!("10.1.2.3/8".parse::<TrustedProxies>().unwrap_err().contains("did you mean 10.0.0.0/8?"));
        let mapped: TrustedProxies = "::ffff:10.0.0.0/104, ::ffff:192.168.1.7".parse().unwrap();
        assert!(mapped.contains("10.9.9.9".parse().unwrap()) && mapped.contains("192.168.1.7".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        assert!("proxy.internal".parse::<TrustedProxies>().is_err());
        assert!(peer("[::ffff:10.1.2.3]:1", "10.1.2.3").trusted, "an IPv4 peer of a dual-stack listener");
        assert_eq!(peer("[::ffff:10.1.2.3]:1", "").forwarded_for, "10.1.2.3");
    }
}
