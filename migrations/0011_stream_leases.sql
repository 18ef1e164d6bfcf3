-- In-process consumers own a group's position through a lease instead of a
-- row lock held for the whole pass (which kept a pool connection busy while
-- handlers ran): owner is the worker, lease_until when another may take over.
ALTER TABLE stream_offsets ADD COLUMN owner text;
ALTER TABLE stream_offsets ADD COLUMN lease_until timestamptz NOT NULL DEFAULT '-infinity';
