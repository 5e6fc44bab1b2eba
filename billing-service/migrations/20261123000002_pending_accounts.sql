-- An account opens PENDING and becomes ACTIVE once billing sees the patient's event on the
-- `patient` topic: an account whose patient was never committed (the create failed after billing
-- answered) is VOIDED after a window, its name and email scrubbed. A later event of that patient
-- (e.g. after a long Kafka outage) revives it from the event's data. CLOSED stays final.
ALTER TABLE billing_accounts DROP CONSTRAINT billing_accounts_status_check;
ALTER TABLE billing_accounts
    ADD CONSTRAINT billing_accounts_status_check CHECK (status IN ('PENDING', 'ACTIVE', 'VOIDED', 'CLOSED')),
    ALTER COLUMN status SET DEFAULT 'PENDING',
    ADD COLUMN pending_since timestamptz,
    ADD COLUMN activated_at  timestamptz,
    ADD COLUMN voided_at     timestamptz;
-- The sweeper's scan: only PENDING rows, oldest first.
CREATE INDEX billing_accounts_pending ON billing_accounts (pending_since) WHERE status = 'PENDING';
