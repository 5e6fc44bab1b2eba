-- What a patient event does to the patient's account, as functions, so that the events fetched
-- together are applied by ONE statement (one round trip per batch instead of one per record),
-- in order, all of them or none.

-- The patient exists (its event was committed by patient-service): its account becomes ACTIVE.
-- One statement, so it never races the sweeper into a wrong state: whichever commits second sees
-- the other's row. CLOSED is final. Returns 'activated' (it was PENDING), 'revived' (it was
-- VOIDED: the event's name and email are taken), 'opened' (there was none: opened from the
-- event) or 'unchanged' (ACTIVE or CLOSED already).
CREATE FUNCTION activate_account(p_patient_id uuid, p_name text, p_email text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    candidate  uuid := gen_random_uuid();
    account_id uuid;
    was_voided boolean;
BEGIN
    WITH before AS (SELECT status FROM billing_accounts WHERE patient_id = p_patient_id)
    INSERT INTO billing_accounts (id, patient_id, name, email, status, activated_at)
    VALUES (candidate, p_patient_id, p_name, p_email, 'ACTIVE', now())
    ON CONFLICT (patient_id) DO UPDATE SET
        status       = 'ACTIVE',
        activated_at = now(),
        voided_at    = NULL,
        name         = CASE WHEN billing_accounts.status = 'VOIDED' THEN EXCLUDED.name ELSE billing_accounts.name END,
        email        = CASE WHEN billing_accounts.status = 'VOIDED' THEN EXCLUDED.email ELSE billing_accounts.email END
    WHERE billing_accounts.status IN ('PENDING', 'VOIDED')
    RETURNING id, coalesce((SELECT status FROM before) = 'VOIDED', false) INTO account_id, was_voided;
    IF NOT FOUND THEN
        RETURN 'unchanged';
    ELSIF account_id = candidate THEN
        RETURN 'opened';
    ELSIF was_voided THEN
        RETURN 'revived';
    END IF;
    RETURN 'activated';
END
$$;

-- The patient was deleted: its account is closed (whatever its state but CLOSED) and its name
-- and email scrubbed. True when it was closed now.
CREATE FUNCTION close_account(p_patient_id uuid)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE billing_accounts SET status = 'CLOSED', closed_at = now(), name = '', email = ''
    WHERE patient_id = p_patient_id AND status <> 'CLOSED';
    RETURN FOUND;
END
$$;

-- Patient events in order: PATIENT_CREATED and PATIENT_UPDATED activate, PATIENT_DELETED
-- closes, any other type changes nothing. Each event's outcome, in the order given: what
-- activate_account answers, 'closed' / 'not_closed' for a deletion, 'ignored'.
CREATE FUNCTION apply_patient_events(p_patient_ids uuid[], p_event_types text[], p_names text[], p_emails text[])
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    n int := cardinality(p_patient_ids);
    outcomes text[] := '{}';
BEGIN
    IF cardinality(p_event_types) <> n OR cardinality(p_names) <> n OR cardinality(p_emails) <> n THEN
        RAISE EXCEPTION 'apply_patient_events: arrays of different lengths' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. n LOOP
        IF p_event_types[i] IN ('PATIENT_CREATED', 'PATIENT_UPDATED') THEN
            outcomes := outcomes || activate_account(p_patient_ids[i], p_names[i], p_emails[i]);
        ELSIF p_event_types[i] = 'PATIENT_DELETED' THEN
            outcomes := outcomes || CASE WHEN close_account(p_patient_ids[i]) THEN 'closed' ELSE 'not_closed' END;
        ELSE
            outcomes := outcomes || 'ignored'::text;
        END IF;
    END LOOP;
    RETURN outcomes;
END
$$;
