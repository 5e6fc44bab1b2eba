-- Every event applied, by id: the de-duplication that makes at-least-once delivery count once.
CREATE TABLE processed_events (
    event_id     uuid        PRIMARY KEY,
    event_type   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Running totals per event type.
CREATE TABLE event_counts (
    event_type text   PRIMARY KEY,
    count      bigint NOT NULL
);

-- Patients currently registered (created, not deleted), with what the aggregates need and
-- nothing more: no names, emails or addresses.
CREATE TABLE active_patients (
    patient_id      uuid PRIMARY KEY,
    date_of_birth   date,
    registered_date date
);

-- Registrations per month of registeredDate, counted from PATIENT_CREATED events.
CREATE TABLE registrations_per_month (
    month text   PRIMARY KEY, -- YYYY-MM
    count bigint NOT NULL
);
