//! Optimistic concurrency over HTTP (RFC 9110 §8.8.3, §13.1.1): a record's version as a strong
//! `ETag`, `"<version>"`, and the versions a client's `If-Match` accepts.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};

use crate::problem::Problem;

/// `ETag` of a version: a strong validator, `"<version>"`.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a number is a header value")
}

/// The versions `If-Match` accepts: `None` when absent or `*` (any current version). A weak tag
/// never matches under If-Match's strong comparison, so it stands for no version. The error is
/// the message of a 400.
pub fn if_match(headers: &HeaderMap) -> Result<Option<Vec<i64>>, &'static str> {
    let mut versions = Vec::new();
    for value in headers.get_all(header::IF_MATCH) {
        let value = value.to_str().map_err(|_| "If-Match is not valid ASCII")?;
        // An empty field is not "no condition" (the change would then go through unchecked).
        if value.split(',').all(|t| t.trim().is_empty()) {
            return Err("If-Match must hold entity tags like \"3\" (from ETag) or *");
        }
        for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                return Ok(None);
            }
            if tag.starts_with("W/") {
                versions.push(-1);
                continue;
            }
            let version = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or("If-Match must hold entity tags like \"3\" (from ETag)")?;
            versions.push(version);
        }
    }
    Ok((!versions.is_empty()).then_some(versions))
}

/// Whether `If-Match` named versions (see [`if_match`]) and `current` is none of them.
pub fn is_stale(expected: Option<&[i64]>, current: i64) -> bool {
    expected.is_some_and(|versions| !versions.contains(&current))
}

/// The 412 of a stale `If-Match` on `what` (e.g. "patient"), naming the current version.
pub fn stale_problem(what: &str, current: i64) -> Problem {
    Problem::new(
        StatusCode::PRECONDITION_FAILED,
        format!("the {what} has changed since the version If-Match names; fetch it again"),
    )
    .with_extension("currentVersion", current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn if_match_takes_strong_tags_star_and_lists() {
        assert_eq!(if_match(&headers(&[])).unwrap(), None);
        assert_eq!(if_match(&headers(&["*"])).unwrap(), None);
        assert_eq!(if_match(&headers(&["\"3\""])).unwrap(), Some(vec![3]));
        assert_eq!(if_match(&headers(&["\"3\", \"4\"", "\"5\""])).unwrap(), Some(vec![3, 4, 5]));
        assert_eq!(if_match(&headers(&["W/\"3\""])).unwrap(), Some(vec![-1]));
        assert!(if_match(&headers(&["3"])).is_err());
        assert!(if_match(&headers(&["\"x\""])).is_err());
        assert!(if_match(&headers(&[""])).is_err(), "an empty If-Match is no condition at all");
        assert!(if_match(&headers(&[" , "])).is_err());
        assert_eq!(etag(7), "\"7\"");
    }

    #[test]
    fn only_a_named_current_version_passes() {
        assert!(!is_stale(None, 4));
        assert!(!is_stale(Some(&[3, 4]), 4));
        assert!(is_stale(Some(&[2, 3]), 4));
        assert!(is_stale(Some(&[-1]), 4), "a weak tag matches nothing");
    }
}
