-- A reminder recorded while later records of its partition were still unread (the consumer
-- catching up on a backlog) is held until the consumer has read up to `held_through`, the
-- partition's last offset when the reminder was recorded: a cancellation or a move of its
-- appointment in that backlog is applied before the reminder can go.
ALTER TABLE mails ADD COLUMN held_partition integer, ADD COLUMN held_through bigint;
CREATE INDEX mails_held_idx ON mails (held_partition, held_through) WHERE held_through IS NOT NULL;
