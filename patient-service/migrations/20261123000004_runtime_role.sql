-- The running service acts as `patient_service_app` (SET ROLE on every pooled connection), which
-- holds only what the service needs. In particular it may INSERT and SELECT audit rows, never
-- UPDATE, DELETE or TRUNCATE them, and it cannot touch the chain head or alter any table: the
-- append trigger runs as its owner (SECURITY DEFINER).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'patient_service_app') THEN
        CREATE ROLE patient_service_app NOLOGIN;
    END IF;
    -- The migrating user must be able to become it (a superuser always can).
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT patient_service_app TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO patient_service_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON patients TO patient_service_app;
GRANT SELECT, INSERT, UPDATE ON outbox TO patient_service_app;
GRANT USAGE ON SEQUENCE outbox_id_seq TO patient_service_app;
GRANT SELECT, INSERT ON audit_log TO patient_service_app;

ALTER FUNCTION audit_append() SECURITY DEFINER;
ALTER FUNCTION audit_append() SET search_path = public, pg_temp;
