//! Appointment aggregates from the `appointment` topic: per month of the appointment's start,
//! how many were booked, cancelled and not attended. Each event counts once: its id joins
//! `processed_events` in the transaction that counts it. Other changes (reschedule, check-in,
//! completion) are not counted.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use common::zone::Zone;
use prost::Message as _;
use proto::{appointment_event_type as kind, appointments::AppointmentEvent};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Booked,
    Cancelled,
    NoShow,
}

impl Counted {
    fn column(self) -> &'static str {
        match self {
            Counted::Booked => "booked",
            Counted::Cancelled => "cancelled",
            Counted::NoShow => "no_show",
        }
    }
}

/// A counted appointment event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: Uuid,
    pub event_type: String,
    pub counted: Counted,
    /// `YYYY-MM` of the appointment's start, in the configured time zone.
    pub month: String,
}

/// The event to count (in `zone`'s month of the start), None for changes that are not counted,
/// or why the record is unusable.
pub fn parse(payload: &[u8], zone: Zone) -> Result<Option<Event>, &'static str> {
    let e = AppointmentEvent::decode(payload).map_err(|_| "value is not a protobuf AppointmentEvent")?;
    let event_id = Uuid::parse_str(&e.event_id).map_err(|_| "event_id is not a UUID")?;
    let starts_at: DateTime<Utc> =
        DateTime::parse_from_rfc3339(&e.starts_at).map_err(|_| "starts_at is not RFC 3339")?.with_timezone(&Utc);
    let counted = match e.event_type.as_str() {
        kind::BOOKED => Counted::Booked,
        kind::CANCELLED => Counted::Cancelled,
        kind::NO_SHOW => Counted::NoShow,
        kind::RESCHEDULED | kind::CHECKED_IN | kind::COMPLETED => return Ok(None),
        _ => return Err("unknown event_type"),
    };
    Ok(Some(Event { event_id, event_type: e.event_type, counted, month: zone.month(starts_at) }))
}

/// Counts `e` unless its id was counted before; whether it was new.
pub async fn apply(tx: &mut Transaction<'_, Postgres>, e: &Event) -> anyhow::Result<bool> {
    let fresh = sqlx::query("INSERT INTO processed_events (event_id, event_type) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(e.event_id)
        .bind(&e.event_type)
        .execute(&mut **tx)
        .await
        .context("failed to record the event id")?
        .rows_affected()
        == 1;
    if fresh {
        // The column is one of three constants, never input.
        let column = e.counted.column();
        sqlx::query(&format!(
            "INSERT INTO appointments_per_month (month, {column}) VALUES ($1, 1)
             ON CONFLICT (month) DO UPDATE SET {column} = appointments_per_month.{column} + 1"
        ))
        .bind(&e.month)
        .execute(&mut **tx)
        .await
        .context("failed to count the appointment event")?;
    }
    Ok(fresh)
}

/// One month of appointments.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Month {
    pub booked: i64,
    pub cancelled: i64,
    pub no_show: i64,
}

pub async fn per_month(pool: &PgPool) -> sqlx::Result<BTreeMap<String, Month>> {
    let rows: Vec<(String, i64, i64, i64)> =
        sqlx::query_as("SELECT month, booked, cancelled, no_show FROM appointments_per_month ORDER BY month")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(m, booked, cancelled, no_show)| (m, Month { booked, cancelled, no_show })).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, starts_at: &str) -> Vec<u8> {
        AppointmentEvent {
            event_id: Uuid::new_v4().to_string(),
            event_type: kind.into(),
            starts_at: starts_at.into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_bookings_cancellations_and_no_shows_by_the_month_they_start() {
        let utc = Zone::default();
        let e = parse(&event("APPOINTMENT_BOOKED", "2027-03-31T23:30:00-02:00"), utc).unwrap().unwrap();
        assert_eq!((e.counted, e.month.as_str()), (Counted::Booked, "2027-04"), "UTC month");
        assert_eq!(parse(&event("APPOINTMENT_NO_SHOW", "2027-01-01T09:00:00Z"), utc).unwrap().unwrap().counted, Counted::NoShow);
        assert!(parse(&event("APPOINTMENT_RESCHEDULED", "2027-01-01T09:00:00Z"), utc).unwrap().is_none());
        assert!(parse(&event("APPOINTMENT_EXPLODED", "2027-01-01T09:00:00Z"), utc).is_err());
        assert!(parse(&event("APPOINTMENT_BOOKED", "tomorrow"), utc).is_err());
        assert!(parse(b"\xff\xff", utc).is_err());
    }

    #[test]
    fn the_month_is_the_configured_time_zone_s() {
        // 20:00 UTC on 31 March is 05:00 on 1 April in Tokyo.
        let payload = event("APPOINTMENT_BOOKED", "2027-03-31T20:00:00Z");
        assert_eq!(parse(&payload, Zone::default()).unwrap().unwrap().month, "2027-03");
        assert_eq!(parse(&payload, "Asia/Tokyo".parse().unwrap()).unwrap().unwrap().month, "2027-04");
    }
}
