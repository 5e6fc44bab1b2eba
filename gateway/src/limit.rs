//! Rate limits per client (SPEC §13): one token bucket per caller (`azp`, else `sub`) and policy,
//! policies chosen by role, answers with the IETF httpapi-ratelimit-headers fields
//! (`RateLimit-Policy: "default";q=200;w=2`, `RateLimit: "default";r=150;t=1`) and `429` +
//! `Retry-After` once a bucket is empty. A bucket holds `burst` requests and refills at `rate`
//! per second, so `q` is the burst and `w` the seconds an empty bucket takes to fill.

use std::{fmt, num::NonZeroU32, str::FromStr, time::Duration};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue},
};
use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    DefaultKeyedRateLimiter, Quota,
};
use verifier::Principal;

pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The configured policies, e.g. `default=100:200,admin=1000:2000` (`name=rate:burst`, rate per
/// second; a name other than `default` is a realm or client role), or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec(Vec<(String, u32, u32)>);

impl FromStr for LimitSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim() == "off" {
            return Ok(Self(Vec::new()));
        }
        let parse = |item: &str| -> Option<(String, u32, u32)> {
            let (name, numbers) = item.trim().split_once('=')?;
            let (rate, burst) = numbers.split_once(':')?;
            let (rate, burst) = (rate.trim().parse().ok()?, burst.trim().parse().ok()?);
            let name = name.trim();
            let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            (valid_name && rate > 0 && burst > 0).then(|| (name.to_owned(), rate, burst))
        };
        let policies: Vec<_> = s
            .split(',')
            .filter(|i| !i.trim().is_empty())
            .map(|i| parse(i).ok_or_else(|| format!("`{i}` is not name=rate:burst with positive numbers")))
            .collect::<Result<_, _>>()?;
        Ok(Self(policies))
    }
}

impl fmt::Display for LimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("off");
        }
        let items: Vec<String> = self.0.iter().map(|(n, r, b)| format!("{n}={r}:{b}")).collect();
        f.write_str(&items.join(","))
    }
}

/// One policy and the buckets of every client under it.
struct Policy {
    name: String,
    rate: u32,
    burst: u32,
    /// `RateLimit-Policy`, built once.
    header: HeaderValue,
    /// The start of every `RateLimit` value: `"name";r=`.
    current_prefix: Vec<u8>,
    buckets: DefaultKeyedRateLimiter<String, StateInformationMiddleware>,
}

/// The outcome of one check: headers for the response, and whether it may pass.
#[derive(Debug)]
pub struct Decision {
    pub allowed: bool,
    /// When the request may be retried (a refused request only).
    pub retry_after: Duration,
    policy: HeaderValue,
    current: HeaderValue,
}

impl Decision {
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
        headers.insert(RATELIMIT.clone(), self.current.clone());
    }
}

pub struct Limiter {
    /// Role policies, most generous first; `default` (if configured) last.
    policies: Vec<Policy>,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(spec: &LimitSpec) -> Self {
        let mut policies: Vec<Policy> = spec
            .0
            .iter()
            .map(|(name, rate, burst)| {
                let (r, b) = (NonZeroU32::new(*rate).expect("positive"), NonZeroU32::new(*burst).expect("positive"));
                let window = burst.div_ceil(*rate);
                Policy {
                    name: name.clone(),
                    rate: *rate,
                    burst: *burst,
                    header: HeaderValue::from_str(&format!("\"{name}\";q={burst};w={window}")).expect("checked name"),
                    current_prefix: format!("\"{name}\";r=").into_bytes(),
                    buckets: DefaultKeyedRateLimiter::keyed(Quota::per_second(r).allow_burst(b))
                        .with_middleware::<StateInformationMiddleware>(),
                }
            })
            .collect();
        policies.sort_by_key(|p| (p.name == "default", std::cmp::Reverse(p.rate)));
        Self { policies, clock: DefaultClock::default() }
    }

    /// Takes one request from the caller's bucket; `None` when no policy applies (limits off).
    pub fn check(&self, principal: &Principal) -> Option<Decision> {
        let policy = self.policies.iter().find(|p| p.name == "default" || principal.roles.contains(&p.name))?;
        let key = principal.client.as_ref().unwrap_or(&principal.subject);
        Some(match policy.buckets.check_key(key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // Seconds until the bucket is full again.
                let full_in = (policy.burst - remaining.min(policy.burst)).div_ceil(policy.rate);
                policy.decision(true, Duration::ZERO, remaining, full_in)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry_after = Duration::from_secs(common::problem::retry_after_secs(wait));
                // `t` keeps one meaning: seconds until the bucket is full again.
                policy.decision(false, retry_after, 0, policy.burst.div_ceil(policy.rate))
            }
        })
    }

    /// Forgets clients whose buckets are full again (they would start full anyway).
    pub fn forget_idle(&self) {
        for policy in &self.policies {
            policy.buckets.retain_recent();
            policy.buckets.shrink_to_fit();
        }
    }
}

impl Policy {
    /// (Every limited request takes this path: the value is assembled, not formatted.)
    fn decision(&self, allowed: bool, retry_after: Duration, remaining: u32, reset: u32) -> Decision {
        // Two u32s of at most 10 digits each, and `;t=`.
        let mut value = Vec::with_capacity(self.current_prefix.len() + 23);
        value.extend_from_slice(&self.current_prefix);
        value.extend_from_slice(itoa::Buffer::new().format(remaining).as_bytes());
        value.extend_from_slice(b";t=");
        value.extend_from_slice(itoa::Buffer::new().format(reset).as_bytes());
        let current = HeaderValue::from_maybe_shared(Bytes::from(value)).expect("checked name");
        Decision { allowed, retry_after, policy: self.header.clone(), current }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn principal(client: &str, roles: &[&str]) -> Principal {
        Principal {
            subject: format!("sub-of-{client}"),
            client: Some(client.into()),
            roles: roles.iter().map(|r| r.to_string()).collect::<HashSet<_>>(),
        }
    }

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        assert_eq!("off".parse::<LimitSpec>().unwrap().to_string(), "off");
        assert_eq!("default=1:2, admin = 10:20".parse::<LimitSpec>().unwrap().to_string(), "default=1:2,admin=10:20");
        for bad in ["default=0:1", "default=1", "x", "=1:1", "a\"b=1:1", "default=1:-1"] {
            assert!(bad.parse::<LimitSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_most_generous_policy_of_the_callers_roles_applies_else_default() {
        let limiter = Limiter::new(&"default=1:2,clinician=5:5,admin=50:100".parse().unwrap());
        let header = |p: &Principal| {
            let mut h = HeaderMap::new();
            limiter.check(p).unwrap().apply(&mut h);
            h[&RATELIMIT_POLICY].to_str().unwrap().to_owned()
        };
        assert_eq!(header(&principal("a", &["clinician", "admin"])), "\"admin\";q=100;w=2");
        assert_eq!(header(&principal("b", &["clinician"])), "\"clinician\";q=5;w=1");
        assert_eq!(header(&principal("c", &["analyst"])), "\"default\";q=2;w=2");
        assert!(Limiter::new(&"off".parse().unwrap()).check(&principal("d", &[])).is_none());
        assert!(Limiter::new(&"admin=1:1".parse().unwrap()).check(&principal("e", &["analyst"])).is_none());
    }

    #[test]
    fn each_client_has_its_own_bucket() {
        let limiter = Limiter::new(&"default=1:2".parse().unwrap());
        let flood = principal("flood", &[]);
        assert!(limiter.check(&flood).unwrap().allowed);
        assert!(limiter.check(&flood).unwrap().allowed);
        let refused = limiter.check(&flood).unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        let mut h = HeaderMap::new();
        refused.apply(&mut h);
        assert_eq!(h[&RATELIMIT], "\"default\";r=0;t=2");

        let other = limiter.check(&principal("quiet", &[])).unwrap();
        assert!(other.allowed, "another client is untouched");
        let mut h = HeaderMap::new();
        other.apply(&mut h);
        assert_eq!(h[&RATELIMIT], "\"default\";r=1;t=1");
    }
}
