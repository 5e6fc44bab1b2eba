//! A syntactically valid email address, shared by every service that accepts one.

use std::fmt;

/// An email address that passed [`Email::parse`]: trimmed, at most 254 characters, one `@`; a
/// local part of ASCII letters, digits and `!#$%&'*+-/=?^_`{|}~` in dot-separated runs (RFC
/// 5322's dot-atom: no quoted local parts, no `<>,;:"()[]\` which would make `<ann@example.com>`
/// or `ann@example.com;` a second address for one mailbox); a dotted domain of ASCII letters,
/// digits and hyphens; beyond ASCII, any character but spaces, controls and invisible ones (RFC
/// 6531: letters, marks and signs of every script).
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

/// Why a string is not an [`Email`] (client-facing text; holds no part of the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEmail(&'static str);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(InvalidEmail("is required"));
        }
        if s.chars().count() > 254 {
            return Err(InvalidEmail("must be at most 254 characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidEmail("must be a valid email address"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(InvalidEmail("must be a valid email address"));
        };
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || c == '-')
            });
        let local_ok = local.split('.').all(|run| {
            !run.is_empty()
                && run.chars().all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
        });
        if local.is_empty() || local.len() > 64 || !local_ok || !domain_ok || s.chars().any(crate::text::is_invisible) {
            return Err(InvalidEmail("must be a valid email address"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Redacted: an email is personal data and must not reach logs through `{:?}`.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn accepts_ordinary_addresses_and_trims() {
        assert_eq!(Email::parse(" jane.doe+x@example.co.uk ").unwrap().as_str(), "jane.doe+x@example.co.uk");
        for ok in [
            "o'brien@example.ie",
            "jösé@bücher.example",
            "a_b-c{d}@mail-1.example.org",
            "1234@123.example",
            "हिन्दी@उदाहरण.भारत",
            "jose\u{301}@example.com",
            "ราม่@example.th",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in ["", "   ", "plain", "@example.com", "a@", "a@b", "a@@b.com", "a b@c.com", "a@b..com", "a@-b.com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        // One mailbox must not pass under a second spelling.
        for bad in [
            "<ann@example.com>",
            "ann@example.com;",
            "ann@example.com,",
            "\"ann\"@example.com",
            "ann\u{200B}@example.com",
            "ann@exa\u{200B}mple.com",
            "ann@[192.0.2.1]",
            ".ann@example.com",
            "ann.@example.com",
            "a..nn@example.com",
            "ann(x)@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_overlong_addresses() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn debug_output_hides_the_address() {
        let email = Email::parse("jane@example.com").unwrap();
        assert!(!format!("{email:?}").contains("jane"));
    }
}
