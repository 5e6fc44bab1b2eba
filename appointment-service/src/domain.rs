//! The appointment model: statuses, the one transition table, commands, and validated slots and
//! booking requests (parse, don't validate).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use proto::appointment_event_type as event;

/// Where an appointment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Booked,
    CheckedIn,
    Completed,
    Cancelled,
    NoShow,
}

/// Every status change there is (the database holds the same table: `appointment_transitions`,
/// checked by a trigger; a test keeps the two equal). BOOKED → BOOKED is a reschedule.
pub const TRANSITIONS: &[(Status, Status)] = &[
    (Status::Booked, Status::Booked),
    (Status::Booked, Status::CheckedIn),
    (Status::Booked, Status::Cancelled),
    (Status::Booked, Status::NoShow),
    (Status::CheckedIn, Status::Completed),
];

impl Status {
    pub const ALL: [Status; 5] = [Status::Booked, Status::CheckedIn, Status::Completed, Status::Cancelled, Status::NoShow];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Booked => "BOOKED",
            Status::CheckedIn => "CHECKED_IN",
            Status::Completed => "COMPLETED",
            Status::Cancelled => "CANCELLED",
            Status::NoShow => "NO_SHOW",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn can_become(self, next: Status) -> bool {
        TRANSITIONS.contains(&(self, next))
    }
}

/// A change of an existing appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Reschedule,
    Cancel,
    CheckIn,
    Complete,
    NoShow,
}

impl Command {
    /// The status the appointment has after the command.
    pub fn target(self) -> Status {
        match self {
            Command::Reschedule => Status::Booked,
            Command::Cancel => Status::Cancelled,
            Command::CheckIn => Status::CheckedIn,
            Command::Complete => Status::Completed,
            Command::NoShow => Status::NoShow,
        }
    }

    /// The `event_type` of the event the command writes.
    pub fn event_type(self) -> &'static str {
        match self {
            Command::Reschedule => event::RESCHEDULED,
            Command::Cancel => event::CANCELLED,
            Command::CheckIn => event::CHECKED_IN,
            Command::Complete => event::COMPLETED,
            Command::NoShow => event::NO_SHOW,
        }
    }

    /// The verb, for problem details ("cannot check in a CANCELLED appointment").
    pub fn verb(self) -> &'static str {
        match self {
            Command::Reschedule => "reschedule",
            Command::Cancel => "cancel",
            Command::CheckIn => "check in",
            Command::Complete => "complete",
            Command::NoShow => "mark as no-show",
        }
    }
}

/// A slot `[starts_at, ends_at)`, validated: ordered, not longer than the limit, in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// The furthest ahead a slot may be booked.
const MAX_AHEAD_DAYS: i64 = 2 * 366;

/// The slot fields of a request body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlotRequest {
    /// Start, RFC 3339 with an offset, e.g. `2027-03-01T09:00:00Z`, whole seconds; in the future.
    #[schema(example = "2027-03-01T09:00:00Z")]
    pub starts_at: Option<String>,
    /// End, RFC 3339 with an offset, whole seconds; after the start.
    #[schema(example = "2027-03-01T09:30:00Z")]
    pub ends_at: Option<String>,
}

impl SlotRequest {
    /// The slot, or messages keyed by field into `errors`.
    pub fn parse(&self, now: DateTime<Utc>, max_minutes: i64, errors: &mut BTreeMap<String, String>) -> Option<Slot> {
        parse_slot(&self.starts_at, &self.ends_at, now, max_minutes, errors)
    }
}

fn parse_slot(
    starts_at: &Option<String>,
    ends_at: &Option<String>,
    now: DateTime<Utc>,
    max_minutes: i64,
    errors: &mut BTreeMap<String, String>,
) -> Option<Slot> {
    let time = |field: &str, value: &Option<String>, errors: &mut BTreeMap<String, String>| match value.as_deref() {
        None | Some("") => {
            errors.insert(field.to_owned(), "is required".to_owned());
            None
        }
        Some(raw) => match DateTime::parse_from_rfc3339(raw) {
            // Whole seconds, as events and schedules carry them (and as the database keeps
            // them: it drops what is finer than a microsecond, which could make a slot empty).
            Ok(t) if t.timestamp_subsec_nanos() != 0 => {
                errors.insert(field.to_owned(), "must be a whole second (no fraction of a second)".to_owned());
                None
            }
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errors.insert(field.to_owned(), "must be an RFC 3339 date-time with an offset".to_owned());
                None
            }
        },
    };
    let starts_at = time("startsAt", starts_at, errors);
    let ends_at = time("endsAt", ends_at, errors);
    let (starts_at, ends_at) = (starts_at?, ends_at?);
    if starts_at <= now {
        errors.insert("startsAt".to_owned(), "must be in the future".to_owned());
    } else if starts_at > now + Duration::days(MAX_AHEAD_DAYS) {
        errors.insert("startsAt".to_owned(), format!("must be at most {MAX_AHEAD_DAYS} days ahead"));
    }
    if ends_at <= starts_at {
        errors.insert("endsAt".to_owned(), "must be after startsAt".to_owned());
    } else if ends_at - starts_at > Duration::minutes(max_minutes) {
        errors.insert("endsAt".to_owned(), format!("an appointment lasts at most {max_minutes} minutes"));
    }
    errors.is_empty().then_some(Slot { starts_at, ends_at })
}

/// `POST /appointments`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BookRequest {
    /// The patient (patient-service's id).
    #[schema(example = "123e4567-e89b-12d3-a456-426614174000")]
    pub patient_id: Option<String>,
    /// The clinician: their Keycloak user id.
    #[schema(example = "0b5a4e9c-3f0e-4a8e-9d7b-2f1c6a5e8d21")]
    pub clinician_id: Option<String>,
    /// Start, RFC 3339 with an offset, whole seconds; in the future.
    #[schema(example = "2027-03-01T09:00:00Z")]
    pub starts_at: Option<String>,
    /// End, RFC 3339 with an offset, whole seconds; after the start.
    #[schema(example = "2027-03-01T09:30:00Z")]
    pub ends_at: Option<String>,
}

/// A validated booking.
#[derive(Debug, Clone, Copy)]
pub struct Booking {
    pub patient_id: Uuid,
    pub clinician_id: Uuid,
    pub slot: Slot,
}

impl BookRequest {
    pub fn parse(&self, now: DateTime<Utc>, max_minutes: i64) -> Result<Booking, BTreeMap<String, String>> {
        let mut errors = BTreeMap::new();
        let id = |field: &str, value: &Option<String>, errors: &mut BTreeMap<String, String>| match value.as_deref() {
            None | Some("") => {
                errors.insert(field.to_owned(), "is required".to_owned());
                None
            }
            Some(raw) => common::extract::canonical_uuid(raw).or_else(|| {
                errors.insert(field.to_owned(), "must be a UUID like 123e4567-e89b-12d3-a456-426614174000".to_owned());
                None
            }),
        };
        let patient_id = id("patientId", &self.patient_id, &mut errors);
        let clinician_id = id("clinicianId", &self.clinician_id, &mut errors);
        let slot = parse_slot(&self.starts_at, &self.ends_at, now, max_minutes, &mut errors);
        match (patient_id, clinician_id, slot) {
            (Some(patient_id), Some(clinician_id), Some(slot)) if errors.is_empty() => {
                Ok(Booking { patient_id, clinician_id, slot })
            }
            _ => Err(errors),
        }
    }
}

/// An appointment: as the write side holds it, as the projection serves it, and in every
/// answer (the same shape everywhere).
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appointment {
    pub id: Uuid,
    pub patient_id: Uuid,
    /// The clinician's Keycloak user id.
    pub clinician_id: Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    #[schema(value_type = Status)]
    pub status: String,
    /// Bumped by every change; also the `ETag`, and the sequence of the change's event.
    pub version: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(starts: &str, ends: &str) -> SlotRequest {
        SlotRequest { starts_at: Some(starts.into()), ends_at: Some(ends.into()) }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_slot_must_be_ordered_future_and_bounded() {
        let mut e = BTreeMap::new();
        assert!(slot("2027-01-02T09:00:00+01:00", "2027-01-02T09:30:00+01:00").parse(now(), 480, &mut e).is_some());
        assert!(
            slot("2027-01-02T09:00:00.000Z", "2027-01-02T09:30:00.000Z").parse(now(), 480, &mut e).is_some(),
            "a zero fraction"
        );
        for (starts, ends, field) in [
            ("2026-12-31T23:00:00Z", "2026-12-31T23:30:00Z", "startsAt"),
            ("2027-01-02T09:00:00Z", "2027-01-02T09:00:00Z", "endsAt"),
            ("2027-01-02T09:00:00Z", "2027-01-02T18:00:01Z", "endsAt"),
            ("2027-01-02 09:00", "2027-01-02T09:30:00Z", "startsAt"),
            ("2027-01-02T09:00:00", "2027-01-02T09:30:00Z", "startsAt"),
            ("2030-01-02T09:00:00Z", "2030-01-02T09:30:00Z", "startsAt"),
            // Below a microsecond the database would make these one instant (a 500 before).
            ("2027-01-02T09:00:00.0000001Z", "2027-01-02T09:00:00.0000009Z", "startsAt"),
            ("2027-01-02T09:00:00Z", "2027-01-02T09:30:00.5Z", "endsAt"),
        ] {
            let mut errors = BTreeMap::new();
            assert!(slot(starts, ends).parse(now(), 480, &mut errors).is_none(), "{starts} {ends}");
            assert!(errors.contains_key(field), "{starts} {ends}: {errors:?}");
        }
    }

    #[test]
    fn a_booking_names_every_bad_field() {
        let req = BookRequest {
            patient_id: Some("not-a-uuid".into()),
            clinician_id: None,
            starts_at: Some("2027-01-02T09:00:00Z".into()),
            ends_at: None,
        };
        let errors = req.parse(now(), 480).unwrap_err();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["clinicianId", "endsAt", "patientId"]);
    }

    #[test]
    fn the_transition_table_is_the_only_way_to_change_status() {
        assert!(Status::Booked.can_become(Status::CheckedIn));
        assert!(Status::CheckedIn.can_become(Status::Completed));
        assert!(!Status::Cancelled.can_become(Status::Booked));
        assert!(!Status::Completed.can_become(Status::Cancelled));
        assert!(!Status::Booked.can_become(Status::Completed));
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
