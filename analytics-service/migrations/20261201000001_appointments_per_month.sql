-- Appointments per month of their start: booked, cancelled and no-show events, each counted
-- once (their event ids join processed_events).
CREATE TABLE appointments_per_month (
    month     text   PRIMARY KEY, -- YYYY-MM
    booked    bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    no_show   bigint NOT NULL DEFAULT 0
);
