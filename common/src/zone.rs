//! Time zones at the edge: an IANA name (`Europe/Berlin`) parsed once into [`Zone`], and what
//! people read in it — the instant a local day starts, the wall-clock time of an instant — so a
//! schedule's "day" and a mail's "09:00" are the clinic's, not UTC's.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Duration, NaiveDate, TimeZone as _, Utc};

/// An IANA time zone. `UTC` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(chrono_tz::Tz);

impl Default for Zone {
    fn default() -> Self {
        Self(chrono_tz::UTC)
    }
}

/// Not an IANA time zone name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an IANA time zone name like Europe/Berlin or UTC")]
pub struct UnknownZone;

impl FromStr for Zone {
    type Err = UnknownZone;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        raw.parse::<chrono_tz::Tz>().map(Self).map_err(|_| UnknownZone)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl Zone {
    /// The local date at `now`.
    pub fn today(self, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.0).date_naive()
    }

    /// The instant local day `date` starts: its midnight, or, where a clock change skips
    /// midnight, the first local time that exists that day.
    pub fn start_of(self, date: NaiveDate) -> DateTime<Utc> {
        let midnight = date.and_hms_opt(0, 0, 0).expect("midnight is a time");
        // Gaps last an hour or less (30 minutes on Lord Howe Island), on whole quarter hours.
        (0..=8)
            .find_map(|quarter| self.0.from_local_datetime(&(midnight + Duration::minutes(15 * quarter))).earliest())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| midnight.and_utc())
    }

    /// `YYYY-MM-DD HH:MM` on this zone's clock.
    pub fn wall_clock(self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.0).format("%Y-%m-%d %H:%M").to_string()
    }

    /// `YYYY-MM`: the local month of `t`.
    pub fn month(self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.0).format("%Y-%m").to_string()
    }

    /// The zone's abbreviation at `t` (`CET`, `CEST`, `UTC`), or its offset where it has none.
    pub fn abbreviation(self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.0).format("%Z").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw).unwrap().with_timezone(&Utc)
    }

    fn date(raw: &str) -> NaiveDate {
        NaiveDate::parse_from_str(raw, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn names_are_iana_names() {
        assert_eq!("Europe/Berlin".parse::<Zone>().unwrap().to_string(), "Europe/Berlin");
        assert_eq!(Zone::default().to_string(), "UTC");
        for bad in ["", "Berlin", "CET+1", "Europe/Atlantis", "+01:00"] {
            assert_eq!(bad.parse::<Zone>(), Err(UnknownZone), "{bad}");
        }
    }

    #[test]
    fn a_local_day_starts_at_its_own_midnight_even_across_clock_changes() {
        let berlin: Zone = "Europe/Berlin".parse().unwrap();
        assert_eq!(berlin.start_of(date("2027-01-15")), utc("2027-01-14T23:00:00Z"));
        assert_eq!(berlin.start_of(date("2027-07-15")), utc("2027-07-14T22:00:00Z"));
        // The day the clocks go forward is 23 hours long.
        let (spring, next) = (berlin.start_of(date("2027-03-28")), berlin.start_of(date("2027-03-29")));
        assert_eq!(next - spring, Duration::hours(23));
        // Where midnight itself is skipped (Chile, September 2026), the day starts at 01:00.
        let santiago: Zone = "America/Santiago".parse().unwrap();
        assert_eq!(santiago.start_of(date("2026-09-06")), utc("2026-09-06T04:00:00Z"));
        assert_eq!(Zone::default().start_of(date("2027-01-15")), utc("2027-01-15T00:00:00Z"));
    }

    #[test]
    fn wall_clock_times_are_local() {
        let berlin: Zone = "Europe/Berlin".parse().unwrap();
        assert_eq!(berlin.wall_clock(utc("2027-01-15T08:00:00Z")), "2027-01-15 09:00");
        assert_eq!(berlin.abbreviation(utc("2027-01-15T08:00:00Z")), "CET");
        assert_eq!(berlin.abbreviation(utc("2027-07-15T08:00:00Z")), "CEST");
        assert_eq!(berlin.today(utc("2027-01-15T23:30:00Z")), date("2027-01-16"));
        assert_eq!(berlin.month(utc("2027-01-31T23:30:00Z")), "2027-02");
        assert_eq!(Zone::default().month(utc("2027-01-31T23:30:00Z")), "2027-01");
    }
}
