-- A deleted patient's idempotency keys stay for the rest of their 24 hours, emptied of the
-- patient's data (the replayable 201 body and its Location; the request's SHA-256 stays, to tell
-- a retry from another body), so a late retry of the create is told the patient was deleted
-- (409) instead of creating it again.
ALTER TABLE idempotency_keys ADD COLUMN patient_deleted_at timestamptz;
