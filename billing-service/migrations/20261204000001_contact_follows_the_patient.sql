-- An account's name and email follow the patient's: a PATIENT_UPDATED event refreshes them on an
-- ACTIVE (or PENDING) account too, not only on a VOIDED one, so billing no longer keeps the
-- address a patient had at registration for as long as the patient exists. Events of one patient
-- may come out of order (SPEC: consumers order them by `sequence`), so the account remembers the
-- sequence of the change its contact came from (0: the create call, or an event without one) and
-- only a later change replaces it on an ACTIVE account; an event without a sequence replaces none.
ALTER TABLE billing_accounts ADD COLUMN contact_sequence bigint NOT NULL DEFAULT 0;

-- The three-argument form goes; calls with three arguments reach the new one (its sequence
-- defaults to 0, as theirs carry none).
DROP FUNCTION activate_account(uuid, text, text);

-- The patient exists (its event was committed by patient-service): its account becomes ACTIVE,
-- its contact the event's when the event is newer than the contact. One statement for the
-- status, so it never races the sweeper into a wrong state; CLOSED is final. Returns 'activated'
-- (it was PENDING), 'revived' (it was VOIDED), 'opened' (there was none: opened from the event),
-- 'refreshed' (ACTIVE already: the contact replaced by a later change's) or 'unchanged' (ACTIVE
-- and no later change, or CLOSED).
CREATE FUNCTION activate_account(p_patient_id uuid, p_name text, p_email text, p_sequence bigint DEFAULT 0)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    candidate  uuid := gen_random_uuid();
    account_id uuid;
    was_voided boolean;
BEGIN
    WITH before AS (SELECT status FROM billing_accounts WHERE patient_id = p_patient_id)
    INSERT INTO billing_accounts (id, patient_id, name, email, status, activated_at, contact_sequence)
    VALUES (candidate, p_patient_id, p_name, p_email, 'ACTIVE', now(), p_sequence)
    ON CONFLICT (patient_id) DO UPDATE SET
        status           = 'ACTIVE',
        activated_at     = now(),
        voided_at        = NULL,
        name             = CASE WHEN billing_accounts.status = 'VOIDED' OR EXCLUDED.contact_sequence > billing_accounts.contact_sequence
                                THEN EXCLUDED.name ELSE billing_accounts.name END,
        email            = CASE WHEN billing_accounts.status = 'VOIDED' OR EXCLUDED.contact_sequence > billing_accounts.contact_sequence
                                THEN EXCLUDED.email ELSE billing_accounts.email END,
        contact_sequence = greatest(billing_accounts.contact_sequence, EXCLUDED.contact_sequence)
    WHERE billing_accounts.status IN ('PENDING', 'VOIDED')
    RETURNING id, coalesce((SELECT status FROM before) = 'VOIDED', false) INTO account_id, was_voided;
    IF NOT FOUND THEN
        UPDATE billing_accounts SET name = p_name, email = p_email, contact_sequence = p_sequence
        WHERE patient_id = p_patient_id AND status = 'ACTIVE' AND p_sequence > contact_sequence;
        RETURN CASE WHEN FOUND THEN 'refreshed' ELSE 'unchanged' END;
    ELSIF account_id = candidate THEN
        RETURN 'opened';
    ELSIF was_voided THEN
        RETURN 'revived';
    END IF;
    RETURN 'activated';
END
$$;

-- Patient events in order: PATIENT_CREATED and PATIENT_UPDATED activate, PATIENT_DELETED
-- closes, any other type changes nothing. Each event's outcome, in the order given: what
-- activate_account answers, 'closed' / 'not_closed' for a deletion, 'ignored'.
CREATE FUNCTION apply_patient_events(p_patient_ids uuid[], p_event_types text[], p_names text[], p_emails text[], p_sequences bigint[])
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    n int := cardinality(p_patient_ids);
    outcomes text[] := '{}';
BEGIN
    IF cardinality(p_event_types) <> n OR cardinality(p_names) <> n OR cardinality(p_emails) <> n
        OR cardinality(p_sequences) <> n THEN
        RAISE EXCEPTION 'apply_patient_events: arrays of different lengths' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. n LOOP
        IF p_event_types[i] IN ('PATIENT_CREATED', 'PATIENT_UPDATED') THEN
            outcomes := outcomes || activate_account(p_patient_ids[i], p_names[i], p_emails[i], p_sequences[i]);
        ELSIF p_event_types[i] = 'PATIENT_DELETED' THEN
            outcomes := outcomes || CASE WHEN close_account(p_patient_ids[i]) THEN 'closed' ELSE 'not_closed' END;
        ELSE
            outcomes := outcomes || 'ignored'::text;
        END IF;
    END LOOP;
    RETURN outcomes;
END
$$;

-- The four-argument form, for a replica still running the previous release during a rolling
-- upgrade: its events carry no sequence, so they activate as before and replace no contact of an
-- ACTIVE account. (No default on the five-argument form's sequences: a four-argument call must
-- resolve to this one only.)
CREATE OR REPLACE FUNCTION apply_patient_events(p_patient_ids uuid[], p_event_types text[], p_names text[], p_emails text[])
RETURNS text[] LANGUAGE sql AS $$
    SELECT apply_patient_events(p_patient_ids, p_event_types, p_names, p_emails,
                                array_fill(0::bigint, ARRAY[cardinality(p_patient_ids)]))
$$;
