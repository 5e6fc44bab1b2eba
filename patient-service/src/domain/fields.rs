//! Newtypes for the fields of a patient. Error texts are client-facing and never echo the input.

use chrono::NaiveDate;

/// An upper bound on addresses so a single row cannot grow without limit.
pub const MAX_ADDRESS_CHARS: usize = 500;

/// A patient's name: the platform's [`common::name::PersonName`].
pub type PatientName = common::name::PersonName;

/// A trimmed, non-empty postal address of at most [`MAX_ADDRESS_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address(String);

impl Address {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("is required");
        }
        if s.chars().count() > MAX_ADDRESS_CHARS {
            return Err("must be at most 500 characters");
        }
        if s.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        if s.chars().any(common::text::is_invisible) {
            return Err("must not contain invisible formatting characters");
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A real calendar date written `YYYY-MM-DD`: exactly four, two and two ASCII digits (chrono alone
/// accepts a signed year such as `-999-01-01`, and skips a space before a one-digit part, as in
/// `2024- 1-05`).
pub fn parse_date(raw: &str) -> Result<NaiveDate, &'static str> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("is required");
    }
    let shape_ok =
        s.len() == 10 && s.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    if !shape_ok {
        return Err("must be a date written YYYY-MM-DD");
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| "must be a real date written YYYY-MM-DD")
}

/// The oldest a patient can be, in years.
pub const MAX_AGE_YEARS: u32 = 150;

/// A date of birth: a real date, not after `today`, at most [`MAX_AGE_YEARS`] before it (a
/// mistyped year such as `0001` or `1026` would otherwise stand for good, and count in every
/// age statistic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    pub fn parse(raw: &str, today: NaiveDate) -> Result<Self, &'static str> {
        let date = parse_date(raw)?;
        if date > today {
            return Err("must not be in the future");
        }
        if today.checked_sub_months(chrono::Months::new(12 * MAX_AGE_YEARS)).is_some_and(|oldest| date < oldest) {
            return Err("must be within the last 150 years");
        }
        Ok(Self(date))
    }

    pub fn date(self) -> NaiveDate {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
    }

    #[test]
    fn addresses_are_required_and_plain_text() {
        assert!(Address::parse("").is_err());
        assert!(Address::parse("1 Main\u{0} St").is_err());
        assert!(Address::parse("1 Main\u{1b}[31m St").is_err());
        assert_eq!(Address::parse(" 1 Main St ").unwrap().as_str(), "1 Main St");
    }

    #[test]
    fn birth_dates_must_be_real_and_not_in_the_future() {
        assert!(BirthDate::parse("2026-11-22", today()).is_ok(), "today is allowed");
        assert!(BirthDate::parse("2026-11-23", today()).is_err());
        assert!(BirthDate::parse("2023-02-29", today()).is_err(), "not a leap year");
        assert!(BirthDate::parse("2024-02-29", today()).is_ok());
        assert!(BirthDate::parse("1990-1-2", today()).is_err());
        for signed_or_short in ["-999-01-01", "+999-01-01", "2024- 1-05", "2024-01- 5", "2024-1-015", "2024-01-+1", " 199-01-011"]
        {
            assert!(parse_date(signed_or_short).is_err(), "{signed_or_short}");
        }
        assert!(BirthDate::parse("02/01/1990", today()).is_err());
        assert!(BirthDate::parse("1876-11-22", today()).is_ok(), "150 years ago today");
        assert_eq!(BirthDate::parse("1876-11-21", today()), Err("must be within the last 150 years"));
        assert!(BirthDate::parse("0001-01-01", today()).is_err());
        assert!(BirthDate::parse("", today()).is_err());
    }
}
