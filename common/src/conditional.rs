//! Optimistic concurrency over HTTP (RFC 9110 §8.8.3, §13.1.1): a record's version as a strong
//! `ETag`, `"<version>"`, and the versions a client's `If-Match` accepts.

use axum::http::{header, HeaderMap, HeaderValue};

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

/// The version `If-Match` named that `current` is not (the highest, for the problem body), or
/// `None` when the precondition holds.
pub fn stale(expected: Option<&[i64]>, current: i64) -> Option<i64> {
    expected.filter(|versions| !versions.contains(&current)).map(|versions| versions.iter().copied().max().unwrap_or_default())
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
        assert_eq!(etag(7), "\"7\"");
    }

    #[test]
    fn only_a_named_current_version_passes() {
        assert_eq!(stale(None, 4), None);
        assert_eq!(stale(Some(&[3, 4]), 4), None);
        assert_eq!(stale(Some(&[2, 3]), 4), Some(3));
        assert_eq!(stale(Some(&[-1]), 4), Some(-1));
    }
}
