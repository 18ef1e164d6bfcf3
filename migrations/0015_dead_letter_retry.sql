-- Dead letters can be sent again (POST /api/v1/admin/dead-letters/retry): a
-- marked row goes back to its group's handler on the group's next pass; it is
-- deleted once handled, or unmarked with its new error.
ALTER TABLE dead_letters ADD COLUMN retry_requested_at timestamptz;
CREATE INDEX dead_letters_retry_idx ON dead_letters (consumer_group, topic, id)
  WHERE retry_requested_at IS NOT NULL;
