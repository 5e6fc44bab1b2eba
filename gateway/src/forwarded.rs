//! Who the client is, as backends are told: `X-Forwarded-For/Proto/Host/Prefix`. Forwarding
//! headers a client wrote itself are believed only from a trusted proxy ([`TrustedProxies`]);
//! from anyone else they are replaced or dropped, so the chain a backend (and its audit trail)
//! sees starts at the address the gateway saw.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue},
};
use ipnet::IpNet;

use crate::proxy::API_PREFIX;

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

/// Sets the forwarding headers. From a trusted proxy, its `X-Forwarded-For` chain is extended
/// with the proxy's address and the protocol, host and port it reports are kept; from anyone
/// else, every forwarding header the client wrote is replaced or dropped ([`is_dropped_claim`]).
pub fn set(headers: &mut HeaderMap, client: Peer, original_host: Option<HeaderValue>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        set(&mut h, peer("10.1.2.3:5000", "10.1.2.4, 192.168.0.0/16"), None);
        assert_eq!(h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["10.1.2.3"]);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-prefix"], "/api");
        for dropped in ["x-forwarded-host", "x-forwarded-port", "x-real-ip", "forwarded", "true-client-ip"] {
            assert!(!h.contains_key(dropped), "{dropped} kept: {h:?}");
        }
        assert_eq!(h["authorization"], "Bearer t", "other headers are left alone");
        set(&mut h, peer("[::1]:5000", ""), Some(HeaderValue::from_static("example.org")));
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-host"], "example.org", "the Host the client asked for");
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_extended_and_what_it_reports_kept() {
        let proxy = peer("192.168.7.9:5000", "10.1.2.4, 192.168.0.0/16");
        let mut h = HeaderMap::new();
        set(&mut h, proxy.clone(), Some(HeaderValue::from_static("example.org")));
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
        set(&mut h, proxy.clone(), Some(HeaderValue::from_static("gateway.internal")));
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
        set(&mut h, peer("10.1.2.4:1", "10.1.2.4"), None);
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
