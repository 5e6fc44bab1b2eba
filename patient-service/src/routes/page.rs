//! Pagination of the list endpoint: parameters, `X-Total-Count` and RFC 8288 `Link`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{repo::ListFilter, Error};

pub const DEFAULT_SIZE: i64 = 50;
pub const MAX_SIZE: i64 = 500;

/// Query parameters of `GET /patients`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 0-based page number.
    #[param(minimum = 0)]
    pub page: Option<i64>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub size: Option<i64>,
    /// Case-insensitive substring of the name (empty: no filter).
    #[param(pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub name: Option<String>,
    /// Exact email, case-insensitive (empty: no filter).
    #[param(pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub email: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub page: i64,
    pub size: i64,
    pub filter: ListFilter,
}

impl TryFrom<ListQuery> for PageRequest {
    type Error = Error;

    fn try_from(q: ListQuery) -> Result<Self, Error> {
        let mut errors = BTreeMap::new();
        let page = q.page.unwrap_or(0);
        if page < 0 {
            errors.insert("page".to_owned(), "must be 0 or greater".to_owned());
        }
        let size = q.size.unwrap_or(DEFAULT_SIZE);
        if !(1..=MAX_SIZE).contains(&size) {
            errors.insert("size".to_owned(), format!("must be between 1 and {MAX_SIZE}"));
        }
        // PostgreSQL rejects NUL in text; no filter needs any control character.
        for (field, value) in [("name", &q.name), ("email", &q.email)] {
            if value.as_deref().is_some_and(|v| v.chars().any(char::is_control)) {
                errors.insert(field.to_owned(), "must not contain control characters".to_owned());
            }
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        let non_empty = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Ok(Self { page, size, filter: ListFilter { name: non_empty(q.name), email: non_empty(q.email) } })
    }
}

impl PageRequest {
    pub fn offset(&self) -> i64 {
        self.page.saturating_mul(self.size)
    }

    /// The `Link` header value: `first` and `last` always, `prev`/`next` where they exist.
    /// `base` is the path the client used (with any proxy prefix); filters are kept.
    pub fn link_header(&self, base: &str, total: i64) -> String {
        let last = if total == 0 { 0 } else { (total - 1) / self.size };
        let mut rels = vec![("first", 0)];
        if self.page > 0 {
            rels.push(("prev", (self.page - 1).min(last)));
        }
        if self.page < last {
            rels.push(("next", self.page + 1));
        }
        rels.push(("last", last));
        rels.iter().map(|(rel, page)| format!("<{base}?{}>; rel=\"{rel}\"", self.query_for(*page))).collect::<Vec<_>>().join(", ")
    }

    fn query_for(&self, page: i64) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("page", &page.to_string()).append_pair("size", &self.size.to_string());
        if let Some(name) = &self.filter.name {
            q.append_pair("name", name);
        }
        if let Some(email) = &self.filter.email {
            q.append_pair("email", email);
        }
        q.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(page: i64, size: i64) -> PageRequest {
        PageRequest::try_from(ListQuery { page: Some(page), size: Some(size), ..Default::default() }).unwrap()
    }

    #[test]
    fn middle_page_links_all_four_rels() {
        assert_eq!(
            req(1, 50).link_header("/patients", 120),
            "</patients?page=0&size=50>; rel=\"first\", </patients?page=0&size=50>; rel=\"prev\", \
             </patients?page=2&size=50>; rel=\"next\", </patients?page=2&size=50>; rel=\"last\""
        );
    }

    #[test]
    fn first_and_last_pages_omit_prev_and_next() {
        assert!(!req(0, 50).link_header("/p", 120).contains("prev"));
        assert!(!req(2, 50).link_header("/p", 120).contains("next"));
        assert!(req(0, 50).link_header("/p", 0).contains("page=0&size=50>; rel=\"last\""));
    }

    #[test]
    fn filters_are_kept_and_encoded() {
        let r = PageRequest::try_from(ListQuery { name: Some("a b&c".into()), ..Default::default() }).unwrap();
        assert!(r.link_header("/p", 1).contains("name=a+b%26c"));
    }

    #[test]
    fn out_of_range_parameters_are_validation_errors() {
        let bad = PageRequest::try_from(ListQuery { page: Some(-1), size: Some(501), ..Default::default() });
        match bad {
            Err(Error::Validation(e)) => assert_eq!(e.keys().collect::<Vec<_>>(), ["page", "size"]),
            other => panic!("{other:?}"),
        }
        assert!(PageRequest::try_from(ListQuery { size: Some(0), ..Default::default() }).is_err());
        assert!(PageRequest::try_from(ListQuery { size: Some(500), ..Default::default() }).is_ok());
    }
}
