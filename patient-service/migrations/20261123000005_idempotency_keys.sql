-- `Idempotency-Key` on POST /patients (IETF httpapi-idempotency-key draft). A key belongs to the
-- caller (`sub`) that used it; it fixes the patient id of the create it stands for, so a retry
-- reuses that id (and billing's account for it) instead of making a second patient. Once the
-- create committed, the row holds its response for replay. Keys expire after 24 hours.
CREATE TABLE idempotency_keys (
    subject      text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    patient_id   uuid        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,           -- a request is working on it until then
    completed_at timestamptz,
    response     jsonb,                 -- the 201 body, for replays
    location     text,
    PRIMARY KEY (subject, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_patient_idx ON idempotency_keys (patient_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO patient_service_app;
