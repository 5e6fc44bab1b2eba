-- A deleted patient's name and email are not kept by billing (SPEC §11): closing scrubs them,
-- and accounts closed before this rule are scrubbed now.
UPDATE billing_accounts SET name = '', email = '' WHERE status = 'CLOSED';
