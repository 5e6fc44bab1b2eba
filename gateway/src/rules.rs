//! The route table: which backend serves a path and which roles a caller needs (SPEC §4).

use axum::http::Method;

/// The services behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Patients,
    Analytics,
}

/// A matched route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub backend: Backend,
    /// Every one of these roles is required.
    pub roles: &'static [&'static str],
}

#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Route(Route),
    MethodNotAllowed,
    NotFound,
}

const READ: &[&str] = &["patients.read"];
const WRITE: &[&str] = &["patients.write"];
const DELETE: &[&str] = &["patients.delete"];
const BILL: &[&str] = &["patients.read", "billing.read"];
const ANALYTICS: &[&str] = &["analytics.read"];

/// Longest route, in path segments after `/api/`.
const MAX_SEGMENTS: usize = 4;

/// Empty, `.`/`..` or encoded separators: never part of a route.
fn suspicious(segment: &str) -> bool {
    let encoded = |needle: &[u8]| segment.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
    segment.is_empty()
        || segment == "."
        || segment == ".."
        || segment.contains('\\')
        || encoded(b"%2f")
        || encoded(b"%5c")
        || encoded(b"%2e")
}

/// Matches `/api/...` paths. Paths with empty, `.` or `..` segments or encoded separators never
/// match, so no spelling of a path can reach a route it does not name.
pub fn match_route(method: &Method, path: &str) -> Match {
    let Some(rest) = path.strip_prefix("/api/") else { return Match::NotFound };
    // Every route has at most MAX_SEGMENTS segments (analytics takes any depth: the rest are
    // only checked, not matched). No allocation on this path.
    let mut segments = [""; MAX_SEGMENTS];
    let mut count = 0;
    for segment in rest.split('/') {
        if suspicious(segment) {
            return Match::NotFound;
        }
        if count < MAX_SEGMENTS {
            segments[count] = segment;
        }
        count += 1;
    }
    let segments = &segments[..count.min(MAX_SEGMENTS)];
    let deeper = count > MAX_SEGMENTS;
    let patients = |roles| Match::Route(Route { backend: Backend::Patients, roles });
    match (segments, method) {
        (["analytics", _, ..], &Method::GET) if deeper => Match::Route(Route { backend: Backend::Analytics, roles: ANALYTICS }),
        (["analytics", _, ..], _) if deeper => Match::MethodNotAllowed,
        _ if deeper => Match::NotFound,
        (["patients"], &Method::GET) => patients(READ),
        (["patients"], &Method::POST) => patients(WRITE),
        (["patients"], _) => Match::MethodNotAllowed,
        (["patients", _], &Method::GET) => patients(READ),
        (["patients", _], &Method::PUT) => patients(WRITE),
        (["patients", _], &Method::DELETE) => patients(DELETE),
        (["patients", _], _) => Match::MethodNotAllowed,
        (["patients", _, "bill"], &Method::GET) => patients(BILL),
        (["patients", _, "bill"], _) => Match::MethodNotAllowed,
        (["analytics", _, ..], &Method::GET) => Match::Route(Route { backend: Backend::Analytics, roles: ANALYTICS }),
        (["analytics", _, ..], _) => Match::MethodNotAllowed,
        _ => Match::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(m: Match) -> &'static [&'static str] {
        match m {
            Match::Route(r) => r.roles,
            other => panic!("expected a route, got {other:?}"),
        }
    }

    #[test]
    fn the_spec_table() {
        assert_eq!(roles(match_route(&Method::GET, "/api/patients")), READ);
        assert_eq!(roles(match_route(&Method::GET, "/api/patients/42")), READ);
        assert_eq!(roles(match_route(&Method::GET, "/api/patients/42/bill")), BILL);
        assert_eq!(roles(match_route(&Method::POST, "/api/patients")), WRITE);
        assert_eq!(roles(match_route(&Method::PUT, "/api/patients/42")), WRITE);
        assert_eq!(roles(match_route(&Method::DELETE, "/api/patients/42")), DELETE);
        assert_eq!(roles(match_route(&Method::GET, "/api/analytics/summary")), ANALYTICS);
        assert_eq!(roles(match_route(&Method::GET, "/api/analytics/a/b")), ANALYTICS);
        assert_eq!(roles(match_route(&Method::GET, "/api/analytics/a/b/c/d/e")), ANALYTICS);
    }

    #[test]
    fn unknown_paths_and_methods() {
        for p in ["/patients", "/api", "/api/", "/api/billing", "/api/patients/1/2", "/api/analytics", "/api/patients/"] {
            assert_eq!(match_route(&Method::GET, p), Match::NotFound, "{p}");
        }
        assert_eq!(match_route(&Method::DELETE, "/api/patients"), Match::MethodNotAllowed);
        assert_eq!(match_route(&Method::POST, "/api/analytics/summary"), Match::MethodNotAllowed);
    }

    #[test]
    fn traversal_and_encoded_separators_never_match() {
        for p in [
            "/api/patients/../analytics/summary",
            "/api/analytics/../patients",
            "/api/patients/%2e%2e",
            "/api/patients/a%2Fb",
            "/api//patients",
            "/api/./patients",
            "/api/analytics/a/b/c/%2E%2E",
            "/api/patients/1/bill/x/y",
        ] {
            assert_eq!(match_route(&Method::GET, p), Match::NotFound, "{p}");
        }
    }
}
