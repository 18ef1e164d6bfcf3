-- The relay publishes each outbox row to its own topic and to
-- analytics-events: a group consuming both handles each copy once, so what
-- it handled is recorded per topic. The hourly cleanup goes by age.
ALTER TABLE stream_processed ADD COLUMN topic text NOT NULL DEFAULT '';
ALTER TABLE stream_processed DROP CONSTRAINT stream_processed_pkey;
ALTER TABLE stream_processed ADD PRIMARY KEY (consumer_group, topic, message_id);
CREATE INDEX stream_processed_age_idx ON stream_processed (processed_at);
