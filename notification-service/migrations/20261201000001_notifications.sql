-- The patients' contact details, from the `patient` topic: what a mail needs to reach them.
-- A deleted patient's name and email are scrubbed; the row stays as the newest sequence seen.
CREATE TABLE contacts (
    patient_id uuid        PRIMARY KEY,
    name       text        NOT NULL,
    email      text        NOT NULL,
    sequence   bigint      NOT NULL,
    deleted    boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every mail to send, recorded BEFORE it is sent (record-then-send). `dedup_key` makes a
-- redelivered event find its mail already recorded: one mail per event. `id` is the mail's
-- Message-ID, the same on every attempt. The sender claims due rows, marks them SENDING,
-- sends, marks them SENT; SMTP down puts them back to PENDING with a later next_attempt_at.
CREATE TABLE mails (
    id              uuid        PRIMARY KEY,
    dedup_key       text        NOT NULL UNIQUE,
    kind            text        NOT NULL CHECK (kind IN ('WELCOME', 'BOOKED', 'RESCHEDULED', 'CANCELLED', 'REMINDER')),
    patient_id      uuid        NOT NULL,
    appointment_id  uuid,
    -- The appointment's version this mail describes (a reminder follows the newest one).
    appointment_version bigint,
    starts_at       timestamptz,
    ends_at         timestamptz,
    status          text        NOT NULL DEFAULT 'PENDING'
                                CHECK (status IN ('PENDING', 'SENDING', 'SENT', 'CANCELLED', 'FAILED')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- Why the last attempt failed (an error class, never an address or a name).
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX mails_due_idx ON mails (next_attempt_at) WHERE status IN ('PENDING', 'SENDING');
CREATE INDEX mails_appointment_idx ON mails (appointment_id) WHERE appointment_id IS NOT NULL;
