-- Since when events are mailed about: set once, on the service's first start, to that moment
-- less MAIL_BACKFILL_SECS. A new consumer group reads the topics from their beginning; what
-- happened before the service existed keeps contacts and reminders current but mails nobody,
-- while anything after — however late it is consumed, e.g. after an outage — is mailed.
CREATE TABLE mailing_since (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    since     timestamptz NOT NULL
);
