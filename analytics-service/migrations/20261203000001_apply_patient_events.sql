-- Patient events applied in ONE statement, in order: each as `apply_patient_event` applies it
-- alone, all of them or none (one statement is one transaction). A busy topic then costs the
-- consumer one round trip per batch of fetched records instead of one per record. Returns each
-- event's outcome ('applied', 'duplicate', 'stale'), in the order given. An id repeated within
-- the batch counts once, as a redelivery would.
CREATE FUNCTION apply_patient_events(
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
        outcomes := outcomes || apply_patient_event(p_event_ids[i], p_event_types[i], p_patient_ids[i],
            p_dates_of_birth[i], p_registered_dates[i], p_months[i], p_sequences[i]);
    END LOOP;
    RETURN outcomes;
END
$$;
