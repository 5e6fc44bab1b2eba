//! The platform's access table (SPEC §4): which service answers a path and which roles a caller
//! needs. One table, read by the gateway (after it strips `/api`) and by every service that
//! re-checks its caller (SPEC §10), so a request that bypasses the gateway meets the same rules.

use http::Method;

/// The services behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Patients,
    Analytics,
    Appointments,
}

/// What a matched path requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub service: Service,
    /// Every one of these roles is required.
    pub roles: &'static [&'static str],
}

#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Rule(Rule),
    MethodNotAllowed,
    NotFound,
}

pub const READ: &[&str] = &["patients.read"];
pub const WRITE: &[&str] = &["patients.write"];
pub const DELETE: &[&str] = &["patients.delete"];
pub const BILL: &[&str] = &["patients.read", "billing.read"];
pub const ANALYTICS: &[&str] = &["analytics.read"];
pub const AUDIT: &[&str] = &["audit.read"];
pub const APPOINTMENTS_READ: &[&str] = &["appointments.read"];
pub const APPOINTMENTS_WRITE: &[&str] = &["appointments.write"];

pub const BILLING_READ: &[&str] = &["billing.read"];
pub const BILLING_WRITE: &[&str] = &["billing.write"];

/// The roles each billing RPC requires (gRPC health and reflection are not behind the check).
pub fn billing_rpc_roles(path: &str) -> Option<&'static [&'static str]> {
    match path {
        "/BillingService/CreateBillingAccount" => Some(BILLING_WRITE),
        "/BillingService/GetBillingAccount" => Some(BILLING_READ),
        _ => None,
    }
}

/// Longest route, in path segments.
const MAX_SEGMENTS: usize = 4;

/// Empty, `.`/`..`, a backslash or any percent-encoding: never part of a route. Every route's
/// segments are literal words or UUIDs, which no client needs to encode; a segment spelled with
/// `%` would be one thing to this table (raw) and another to a handler (decoded), e.g. a patient
/// id `%36f9…` that the handler reads as `6f9…` while the audit could not name it.
fn suspicious(segment: &str) -> bool {
    segment.is_empty() || segment == "." || segment == ".." || segment.contains(['\\', '%'])
}

/// The method whose rule a request follows: `HEAD` is `GET` without the body (RFC 9110 §9.3.2),
/// so it needs what `GET` needs and is the same read (audited as one).
pub fn as_routed(method: &Method) -> &Method {
    if method == Method::HEAD {
        &Method::GET
    } else {
        method
    }
}

/// The rule for a service path such as `/patients/42` (the gateway's `/api` already stripped).
/// Paths with empty, `.` or `..` segments, a backslash or any percent-encoding never match, so no
/// spelling of a path can reach a route it does not name. No allocation.
pub fn rule_for(method: &Method, path: &str) -> Access {
    let method = as_routed(method);
    let Some(rest) = path.strip_prefix('/') else { return Access::NotFound };
    // Every route has at most MAX_SEGMENTS segments (analytics takes any depth: the rest are
    // only checked, not matched).
    let mut segments = [""; MAX_SEGMENTS];
    let mut count = 0;
    for segment in rest.split('/') {
        if suspicious(segment) {
            return Access::NotFound;
        }
        if count < MAX_SEGMENTS {
            segments[count] = segment;
        }
        count += 1;
    }
    let segments = &segments[..count.min(MAX_SEGMENTS)];
    let deeper = count > MAX_SEGMENTS;
    let patients = |roles| Access::Rule(Rule { service: Service::Patients, roles });
    let analytics = Access::Rule(Rule { service: Service::Analytics, roles: ANALYTICS });
    let appointments = |roles| Access::Rule(Rule { service: Service::Appointments, roles });
    match (segments, method) {
        (["analytics", _, ..], &Method::GET) if deeper => analytics,
        (["analytics", _, ..], _) if deeper => Access::MethodNotAllowed,
        _ if deeper => Access::NotFound,
        (["patients"], &Method::GET) => patients(READ),
        (["patients"], &Method::POST) => patients(WRITE),
        (["patients"], _) => Access::MethodNotAllowed,
        (["patients", _], &Method::GET) => patients(READ),
        (["patients", _], &Method::PUT) => patients(WRITE),
        (["patients", _], &Method::DELETE) => patients(DELETE),
        (["patients", _], _) => Access::MethodNotAllowed,
        (["patients", _, "bill"], &Method::GET) => patients(BILL),
        (["patients", _, "bill"], _) => Access::MethodNotAllowed,
        (["appointments"], &Method::POST) => appointments(APPOINTMENTS_WRITE),
        (["appointments"], _) => Access::MethodNotAllowed,
        (["appointments", "schedule" | "upcoming"], &Method::GET) => appointments(APPOINTMENTS_READ),
        (["appointments", "schedule" | "upcoming"], _) => Access::MethodNotAllowed,
        (["appointments", _], &Method::GET) => appointments(APPOINTMENTS_READ),
        (["appointments", _], _) => Access::MethodNotAllowed,
        (["appointments", _, "reschedule" | "cancel" | "check-in" | "complete" | "no-show"], &Method::POST) => {
            appointments(APPOINTMENTS_WRITE)
        }
        (["appointments", _, "reschedule" | "cancel" | "check-in" | "complete" | "no-show"], _) => Access::MethodNotAllowed,
        (["audit"], &Method::GET) => patients(AUDIT),
        (["audit"], _) => Access::MethodNotAllowed,
        (["analytics", _, ..], &Method::GET) => analytics,
        (["analytics", _, ..], _) => Access::MethodNotAllowed,
        _ => Access::NotFound,
    }
}

/// The methods `path` takes, for an `Allow` header (RFC 9110 §15.5.6), e.g. `GET, HEAD, POST`.
pub fn allowed_methods(path: &str) -> String {
    let methods = [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE];
    let allowed: Vec<&str> =
        methods.iter().filter(|m| matches!(rule_for(m, path), Access::Rule(_))).map(Method::as_str).collect();
    allowed.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(m: Access) -> &'static [&'static str] {
        match m {
            Access::Rule(r) => r.roles,
            other => panic!("expected a route, got {other:?}"),
        }
    }

    #[test]
    fn the_spec_table() {
        assert_eq!(roles(rule_for(&Method::GET, "/patients")), READ);
        assert_eq!(roles(rule_for(&Method::GET, "/patients/42")), READ);
        assert_eq!(roles(rule_for(&Method::GET, "/patients/42/bill")), BILL);
        assert_eq!(roles(rule_for(&Method::POST, "/patients")), WRITE);
        assert_eq!(roles(rule_for(&Method::PUT, "/patients/42")), WRITE);
        assert_eq!(roles(rule_for(&Method::DELETE, "/patients/42")), DELETE);
        assert_eq!(roles(rule_for(&Method::GET, "/analytics/summary")), ANALYTICS);
        assert_eq!(roles(rule_for(&Method::GET, "/analytics/a/b")), ANALYTICS);
        assert_eq!(roles(rule_for(&Method::GET, "/analytics/a/b/c/d/e")), ANALYTICS);
        assert_eq!(roles(rule_for(&Method::GET, "/audit")), AUDIT);
        assert_eq!(rule_for(&Method::POST, "/audit"), Access::MethodNotAllowed);
        assert_eq!(roles(rule_for(&Method::POST, "/appointments")), APPOINTMENTS_WRITE);
        assert_eq!(roles(rule_for(&Method::GET, "/appointments/1")), APPOINTMENTS_READ);
        assert_eq!(roles(rule_for(&Method::GET, "/appointments/schedule")), APPOINTMENTS_READ);
        assert_eq!(roles(rule_for(&Method::GET, "/appointments/upcoming")), APPOINTMENTS_READ);
        for command in ["reschedule", "cancel", "check-in", "complete", "no-show"] {
            assert_eq!(roles(rule_for(&Method::POST, &format!("/appointments/1/{command}"))), APPOINTMENTS_WRITE);
            assert_eq!(allowed_methods(&format!("/appointments/1/{command}")), "POST");
        }
        assert_eq!(allowed_methods("/appointments"), "POST");
        assert_eq!(allowed_methods("/appointments/schedule"), "GET, HEAD");
        assert_eq!(rule_for(&Method::GET, "/appointments/1/other"), Access::NotFound);
    }

    #[test]
    fn head_is_the_read_its_get_is() {
        for p in ["/patients", "/patients/42", "/patients/42/bill", "/audit", "/appointments/1", "/analytics/a/b/c/d/e"] {
            assert_eq!(rule_for(&Method::HEAD, p), rule_for(&Method::GET, p), "{p}");
        }
        for p in ["/appointments", "/appointments/1/cancel"] {
            assert_eq!(rule_for(&Method::HEAD, p), Access::MethodNotAllowed, "{p}");
        }
        assert_eq!(rule_for(&Method::HEAD, "/patients/..%2Faudit"), Access::NotFound);
        assert_eq!(as_routed(&Method::PUT), &Method::PUT);
    }

    #[test]
    fn unknown_paths_and_methods() {
        for p in ["", "patients", "/api", "/", "/billing", "/patients/1/2", "/analytics", "/patients/", "/audit/1"] {
            assert_eq!(rule_for(&Method::GET, p), Access::NotFound, "{p}");
        }
        assert_eq!(rule_for(&Method::DELETE, "/patients"), Access::MethodNotAllowed);
        assert_eq!(allowed_methods("/patients"), "GET, HEAD, POST");
        assert_eq!(allowed_methods("/patients/1"), "GET, HEAD, PUT, DELETE");
        assert_eq!(allowed_methods("/analytics/summary"), "GET, HEAD");
        assert_eq!(rule_for(&Method::POST, "/analytics/summary"), Access::MethodNotAllowed);
    }

    #[test]
    fn traversal_and_encoded_characters_never_match() {
        for p in [
            "/patients/../analytics/summary",
            "/analytics/../patients",
            "/patients/%2e%2e",
            "/patients/a%2Fb",
            "//patients",
            "/./patients",
            "/analytics/a/b/c/%2E%2E",
            "/patients/1/bill/x/y",
            "/patients/%36f9619ff-8b86-d011-b42d-00c04fc964ff",
            "/patients/6f9619ff%2D8b86-d011-b42d-00c04fc964ff/bill",
            "/appointments/%73chedule",
            "/analytics/a/b/c/d/%41",
        ] {
            assert_eq!(rule_for(&Method::GET, p), Access::NotFound, "{p}");
        }
    }
}
