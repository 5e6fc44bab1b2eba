-- The row hash reads the time zone-independent epoch of a timestamptz and converts text to
-- UTF-8: functions PostgreSQL marks STABLE, so the hash is STABLE too, not IMMUTABLE. Marked
-- truthfully, PostgreSQL inlines it into the append trigger's expression, planned once per
-- connection, instead of parsing and planning the function's body in every transaction that
-- appends a record. The definition itself is unchanged: every existing hash still verifies.
ALTER FUNCTION audit_row_hash(audit_log) STABLE;
