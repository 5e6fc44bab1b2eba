-- A no-show frees the rest of its slot: the clinician can see someone else (a walk-in) in the
-- time the absent patient would have had. Cancelled and no-show appointments never block a slot.
ALTER TABLE appointments DROP CONSTRAINT appointments_no_double_booking;
ALTER TABLE appointments ADD CONSTRAINT appointments_no_double_booking
    EXCLUDE USING gist (clinician_id WITH =, tstzrange(starts_at, ends_at) WITH &&)
    WHERE (status NOT IN ('CANCELLED', 'NO_SHOW'));
