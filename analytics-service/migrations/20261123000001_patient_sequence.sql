-- The newest change applied per patient (the events' `sequence`), so a late, older event of a
-- patient is still counted but never undoes a newer one (a DELETED overtaken by its CREATED
-- must not leave a ghost active patient).
CREATE TABLE patient_sequence (
    patient_id uuid   PRIMARY KEY,
    sequence   bigint NOT NULL
);
