-- The running totals (event_counts, registrations_per_month) move once per batch instead of once
-- per event: each event still records its id and changes its patient's state in order
-- (apply_patient_event_state), then one statement per table adds what the batch counted. The
-- batch is still one statement, so the totals and the events commit together or not at all, and
-- the outcomes are those of before: an event is counted unless it is a duplicate (a stale one
-- is counted, its state kept). The totals' rows are taken in key order, so two replicas never
-- wait on each other's in opposite order.

-- One event's id and its patient's state; 'duplicate', 'stale' or 'applied' (the totals are the
-- caller's).
CREATE FUNCTION apply_patient_event_state(
    p_event_id uuid, p_event_type text, p_patient_id uuid,
    p_date_of_birth date, p_registered_date date, p_sequence bigint
) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO processed_events (event_id, event_type) VALUES (p_event_id, p_event_type) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    IF p_sequence > 0 THEN
        INSERT INTO patient_sequence (patient_id, sequence) VALUES (p_patient_id, p_sequence)
            ON CONFLICT (patient_id) DO UPDATE SET sequence = EXCLUDED.sequence
            WHERE patient_sequence.sequence < EXCLUDED.sequence;
        IF NOT FOUND THEN
            RETURN 'stale';
        END IF;
    END IF;
    IF p_event_type = 'PATIENT_CREATED' THEN
        INSERT INTO active_patients (patient_id, date_of_birth, registered_date)
            VALUES (p_patient_id, p_date_of_birth, p_registered_date)
            ON CONFLICT (patient_id) DO UPDATE SET date_of_birth = EXCLUDED.date_of_birth,
                                                   registered_date = EXCLUDED.registered_date;
    ELSIF p_event_type = 'PATIENT_UPDATED' AND p_sequence > 0 THEN
        INSERT INTO active_patients (patient_id, date_of_birth, registered_date)
            VALUES (p_patient_id, p_date_of_birth, p_registered_date)
            ON CONFLICT (patient_id) DO UPDATE
            SET date_of_birth = COALESCE(EXCLUDED.date_of_birth, active_patients.date_of_birth),
                registered_date = COALESCE(EXCLUDED.registered_date, active_patients.registered_date);
    ELSIF p_event_type = 'PATIENT_UPDATED' THEN
        UPDATE active_patients SET date_of_birth = COALESCE(p_date_of_birth, date_of_birth),
                                   registered_date = COALESCE(p_registered_date, registered_date)
            WHERE patient_id = p_patient_id;
    ELSIF p_event_type = 'PATIENT_DELETED' THEN
        DELETE FROM active_patients WHERE patient_id = p_patient_id;
    END IF;
    RETURN 'applied';
END
$$;

CREATE OR REPLACE FUNCTION apply_patient_events(
    p_event_ids uuid[], p_event_types text[], p_patient_ids uuid[],
    p_dates_of_birth date[], p_registered_dates date[], p_months text[], p_sequences bigint[]
) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    n int := cardinality(p_event_ids);
    outcomes text[] := '{}';
BEGIN
    IF cardinality(p_event_types) <> n OR cardinality(p_patient_ids) <> n OR cardinality(p_dates_of_birth) <> n
       OR cardinality(p_registered_dates) <> n OR cardinality(p_months) <> n OR cardinality(p_sequences) <> n THEN
        RAISE EXCEPTION 'apply_patient_events: arrays of different lengths' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. n LOOP
        outcomes := outcomes || apply_patient_event_state(p_event_ids[i], p_event_types[i], p_patient_ids[i],
            p_dates_of_birth[i], p_registered_dates[i], p_sequences[i]);
    END LOOP;
    INSERT INTO event_counts (event_type, count)
        SELECT event_type, count(*) FROM unnest(p_event_types, outcomes) AS e(event_type, outcome)
        WHERE outcome <> 'duplicate'
        GROUP BY event_type ORDER BY event_type
        ON CONFLICT (event_type) DO UPDATE SET count = event_counts.count + EXCLUDED.count;
    INSERT INTO registrations_per_month (month, count)
        SELECT month, count(*) FROM unnest(p_event_types, p_months, outcomes) AS e(event_type, month, outcome)
        WHERE outcome <> 'duplicate' AND event_type = 'PATIENT_CREATED' AND month IS NOT NULL
        GROUP BY month ORDER BY month
        ON CONFLICT (month) DO UPDATE SET count = registrations_per_month.count + EXCLUDED.count;
    RETURN outcomes;
END
$$;

-- One event: a batch of one, so both forms share one definition.
CREATE OR REPLACE FUNCTION apply_patient_event(
    p_event_id uuid, p_event_type text, p_patient_id uuid,
    p_date_of_birth date, p_registered_date date, p_month text, p_sequence bigint
) RETURNS text LANGUAGE sql AS $$
    SELECT (apply_patient_events(ARRAY[p_event_id], ARRAY[p_event_type], ARRAY[p_patient_id],
        ARRAY[p_date_of_birth], ARRAY[p_registered_date], ARRAY[p_month], ARRAY[p_sequence]))[1]
$$;
