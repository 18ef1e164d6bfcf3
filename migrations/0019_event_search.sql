-- GET /events?q= searches names and venues for a substring (ILIKE '%q%'),
-- which no b-tree can answer: without these every search read the whole
-- events table (tests/lua/plans_spec.lua found it). Trigram indexes answer
-- it for any q of three characters or more. pg_trgm is a trusted extension
-- (Postgres 13+), shipped with the server package.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX events_name_trgm_idx ON events USING gin (name gin_trgm_ops);
CREATE INDEX events_venue_trgm_idx ON events USING gin (venue gin_trgm_ops);
