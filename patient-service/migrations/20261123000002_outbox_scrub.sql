-- Personal data kept no longer than needed (SPEC §11): a published event's payload (name, email,
-- address) is dropped once the broker has acknowledged it; the row stays as the publication record.
ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;
UPDATE outbox SET payload = NULL WHERE sent_at IS NOT NULL;
