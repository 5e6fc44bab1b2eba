-- Audit trail of every access to patient data (SPEC §11). Append-only and hash-chained: each row's
-- hash covers its content and the previous row's hash, so changing, removing or reordering a row
-- breaks every link after it (`patient_service::audit::verify_chain` names the first broken one).
CREATE TABLE audit_log (
    seq            bigint      PRIMARY KEY,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    subject        text,                -- `sub`: Keycloak's opaque user id, never a name
    client_id      text,                -- `azp`
    action         text        NOT NULL CHECK (action IN
                       ('patient.search', 'patient.read', 'patient.create', 'patient.update', 'patient.delete', 'bill.read')),
    patient_id     uuid,
    query          text,                -- the list filter's shape (which filters, page, size), never their values
    outcome        smallint    NOT NULL, -- the HTTP status answered
    request_id     text,
    trace_id       text,
    client_address text,                -- the peer that called this service
    forwarded_for  text,                -- the X-Forwarded-For chain it presented
    prev_hash      bytea       NOT NULL,
    hash           bytea       NOT NULL
);
CREATE INDEX audit_log_patient_idx ON audit_log (patient_id, seq);
CREATE INDEX audit_log_subject_idx ON audit_log (subject, seq);
CREATE INDEX audit_log_recorded_at_idx ON audit_log (recorded_at);

-- The end of the chain; its row lock orders concurrent appends.
CREATE TABLE audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint  NOT NULL,
    hash      bytea   NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, sha256(convert_to('patient-service audit genesis', 'UTF8')));

-- The one definition of a row's hash (used when appending and when verifying). NULL and '' are
-- told apart (quote_nullable), times are exact microseconds since the epoch.
CREATE FUNCTION audit_row_hash(r audit_log) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(r.prev_hash || convert_to(concat_ws('|',
        r.seq::text,
        (extract(epoch FROM r.recorded_at) * 1000000)::bigint::text,
        quote_nullable(r.subject), quote_nullable(r.client_id), quote_literal(r.action),
        quote_nullable(r.patient_id::text), quote_nullable(r.query), r.outcome::text,
        quote_nullable(r.request_id), quote_nullable(r.trace_id),
        quote_nullable(r.client_address), quote_nullable(r.forwarded_for)), 'UTF8'))
$$;

CREATE FUNCTION audit_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head audit_head;
BEGIN
    SELECT * INTO head FROM audit_head FOR UPDATE;
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.hash := audit_row_hash(NEW);
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_log_append BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_append();

-- Append-only, for the service's own role too.
CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
