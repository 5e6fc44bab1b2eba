//! A person's name as the platform keeps it, shared by every service that accepts one.

use std::fmt;

/// At most this many characters in a name (SPEC §5).
pub const MAX_NAME_CHARS: usize = 100;

/// A name that passed [`PersonName::parse`]: trimmed, non-empty, at most [`MAX_NAME_CHARS`]
/// characters, no control characters (PostgreSQL's text refuses NUL; the others have no place
/// in a name, a mail header or a log line) and no invisible ones ([`crate::text::is_invisible`]:
/// a zero-width space alone would pass for a name).
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

/// Why a string is not a [`PersonName`] (client-facing text; holds no part of the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(&'static str);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, InvalidName> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(InvalidName("is required"));
        }
        if s.chars().count() > MAX_NAME_CHARS {
            return Err(InvalidName("must be at most 100 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidName("must not contain control characters"));
        }
        if s.chars().any(crate::text::is_invisible) {
            return Err(InvalidName("must not contain invisible formatting characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Personal data: never printed by `{:?}`.
impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonName(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_in_characters_and_plain_text() {
        assert_eq!(PersonName::parse("  Ann  ").unwrap().as_str(), "Ann");
        assert!(PersonName::parse(&"é".repeat(MAX_NAME_CHARS)).is_ok(), "characters, not bytes");
        assert_eq!(PersonName::parse(&"é".repeat(MAX_NAME_CHARS + 1)).unwrap_err().to_string(), "must be at most 100 characters");
        assert_eq!(PersonName::parse("   ").unwrap_err().to_string(), "is required");
        for control in ["A\u{0}B", "A\u{7}B", "A\nB", "A\u{85}B"] {
            assert_eq!(PersonName::parse(control).unwrap_err().to_string(), "must not contain control characters", "{control:?}");
        }
        for spelt_with_joiners in
            ["\u{639}\u{644}\u{6CC}\u{200C}\u{627}\u{6A9}\u{628}\u{631}", "\u{DC1}\u{DCA}\u{200D}\u{DBB}\u{DD3}"]
        {
            assert!(PersonName::parse(spelt_with_joiners).is_ok(), "{spelt_with_joiners:?}");
        }
        for invisible in ["\u{200B}", "Ann\u{202E}Smith", "Ann\u{2028}Smith", "\u{FEFF}Ann", "\u{3164}"] {
            assert_eq!(
                PersonName::parse(invisible).unwrap_err().to_string(),
                "must not contain invisible formatting characters",
                "{invisible:?}"
            );
        }
        assert_eq!(format!("{:?}", PersonName::parse("Ann").unwrap()), "PersonName(<redacted>)");
    }
}
