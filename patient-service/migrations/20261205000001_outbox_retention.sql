-- Published outbox rows are deleted after a retention (common::outbox, OUTBOX_RETENTION_HOURS),
-- by the relay running as the service's role.
GRANT DELETE ON outbox TO patient_service_app;

-- Which demo patients were seeded (the seeding adds one only once: a deleted one stays deleted,
-- at every restart). Before, the outbox told, and its rows no longer stay for good.
CREATE TABLE demo_seeded (
    patient_id uuid        PRIMARY KEY,
    seeded_at  timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT ON demo_seeded TO patient_service_app;
