-- Per-patient order end to end: every change of a patient bumps its version, and its event
-- carries it as `sequence` (PATIENT_CREATED = 1; PATIENT_DELETED = the last version + 1).
ALTER TABLE patients ADD COLUMN version bigint NOT NULL DEFAULT 1;
-- The relay publishes a patient's event only when no earlier one of that patient is unsent.
CREATE INDEX outbox_unsent_patient_idx ON outbox (patient_id, id) WHERE sent_at IS NULL;
