CREATE TABLE patients (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL,
    email           text        NOT NULL,
    address         text        NOT NULL,
    date_of_birth   date        NOT NULL,
    registered_date date        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- "Email already used" is decided here, not by a pre-check, so concurrent creates cannot race.
CREATE UNIQUE INDEX patients_email_key ON patients (lower(email));
-- The stable order of the list endpoint.
CREATE INDEX patients_created_at_id_idx ON patients (created_at, id);

-- Transactional outbox: written in the same transaction as the change it describes; a relay
-- publishes unsent rows in id order and stamps sent_at after the broker acknowledged.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    patient_id  uuid        NOT NULL,
    event_type  text        NOT NULL CHECK (event_type IN ('PATIENT_CREATED', 'PATIENT_UPDATED', 'PATIENT_DELETED')),
    payload     bytea       NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
