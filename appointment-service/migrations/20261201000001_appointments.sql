-- Write side (commands). The invariants live here, not only in pre-checks:
-- - a clinician never has two overlapping appointments that are not cancelled (exclusion
--   constraint: concurrent bookings of one slot cannot both commit);
-- - a slot is booked or moved into the future only (trigger: a CHECK cannot use now());
-- - status changes follow appointment_transitions (trigger), the same table the code uses.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE appointment_transitions (
    from_status text NOT NULL,
    to_status   text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);
INSERT INTO appointment_transitions (from_status, to_status) VALUES
    ('BOOKED', 'BOOKED'),          -- reschedule
    ('BOOKED', 'CHECKED_IN'),
    ('BOOKED', 'CANCELLED'),
    ('BOOKED', 'NO_SHOW'),
    ('CHECKED_IN', 'COMPLETED');

CREATE TABLE appointments (
    id           uuid        PRIMARY KEY,
    patient_id   uuid        NOT NULL,
    clinician_id uuid        NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    status       text        NOT NULL DEFAULT 'BOOKED'
                             CHECK (status IN ('BOOKED', 'CHECKED_IN', 'COMPLETED', 'CANCELLED', 'NO_SHOW')),
    -- Bumped by every change; the ETag, and the sequence of the change's event.
    version      bigint      NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT appointments_slot_order CHECK (ends_at > starts_at),
    CONSTRAINT appointments_no_double_booking
        EXCLUDE USING gist (clinician_id WITH =, tstzrange(starts_at, ends_at) WITH &&)
        WHERE (status <> 'CANCELLED')
);
CREATE INDEX appointments_patient_idx ON appointments (patient_id, starts_at);

CREATE FUNCTION appointments_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'INSERT' OR NEW.starts_at IS DISTINCT FROM OLD.starts_at OR NEW.ends_at IS DISTINCT FROM OLD.ends_at)
       AND NEW.starts_at <= now() THEN
        RAISE EXCEPTION 'an appointment slot must lie in the future'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'appointments_future_slot';
    END IF;
    IF TG_OP = 'UPDATE' AND NOT EXISTS (SELECT 1 FROM appointment_transitions
                                        WHERE from_status = OLD.status AND to_status = NEW.status) THEN
        RAISE EXCEPTION 'an appointment cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'appointments_transition';
    END IF;
    IF TG_OP = 'INSERT' AND NEW.status <> 'BOOKED' THEN
        RAISE EXCEPTION 'an appointment starts BOOKED'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'appointments_transition';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER appointments_guard BEFORE INSERT OR UPDATE ON appointments
    FOR EACH ROW EXECUTE FUNCTION appointments_guard();

-- The replica of patients ("cached patient repository"), from the `patient` topic: only what a
-- booking needs to know (the patient exists and is not deleted), no name, email or address.
CREATE TABLE patients (
    id         uuid        PRIMARY KEY,
    -- The newest event applied (its per-patient sequence; 0 when the producer sets none).
    sequence   bigint      NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox (common::outbox): written in the transaction of the change.
CREATE TABLE outbox (
    id             bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    appointment_id uuid        NOT NULL,
    event_type     text        NOT NULL,
    payload        bytea,
    traceparent    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_unsent_appointment_idx ON outbox (appointment_id, id) WHERE sent_at IS NULL;

-- Read side (queries): the projection of the `appointment` topic. Each row is the newest
-- snapshot of an appointment the projection applied; an older event never overwrites a newer.
CREATE TABLE schedule (
    appointment_id uuid        PRIMARY KEY,
    patient_id     uuid        NOT NULL,
    clinician_id   uuid        NOT NULL,
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz NOT NULL,
    status         text        NOT NULL,
    version        bigint      NOT NULL,
    changed_at     timestamptz NOT NULL
);
CREATE INDEX schedule_clinician_idx ON schedule (clinician_id, starts_at, appointment_id);
CREATE INDEX schedule_patient_idx ON schedule (patient_id, starts_at, appointment_id);

-- How far the projection is: events applied so far and when the newest of them happened.
CREATE TABLE projection_position (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    applied       bigint      NOT NULL DEFAULT 0,
    last_event_at timestamptz
);
INSERT INTO projection_position DEFAULT VALUES;
