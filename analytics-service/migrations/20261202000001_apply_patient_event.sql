-- A patient event applied in ONE statement: its id recorded, the counts moved and the patient's
-- state changed together, atomic without a transaction of the caller's and in one round trip
-- (it used to take begin, up to five statements and commit). Returns 'duplicate' when the event
-- id was applied before (nothing changes), 'stale' when the patient already holds a newer change
-- (counted, state kept), 'applied' otherwise.
-- `p_month` is the registration's month as the service formats it (YYYY-MM, signed beyond year
-- 9999 or before year 1), the key registrations_per_month has always used.
CREATE FUNCTION apply_patient_event(
    p_event_id uuid, p_event_type text, p_patient_id uuid,
    p_date_of_birth date, p_registered_date date, p_month text, p_sequence bigint
) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO processed_events (event_id, event_type) VALUES (p_event_id, p_event_type) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    INSERT INTO event_counts (event_type, count) VALUES (p_event_type, 1)
        ON CONFLICT (event_type) DO UPDATE SET count = event_counts.count + 1;
    IF p_event_type = 'PATIENT_CREATED' AND p_month IS NOT NULL THEN
        INSERT INTO registrations_per_month (month, count) VALUES (p_month, 1)
            ON CONFLICT (month) DO UPDATE SET count = registrations_per_month.count + 1;
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
