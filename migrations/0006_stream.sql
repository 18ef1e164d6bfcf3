-- In-process delivery of the outbox (when no Kafka is configured): each
-- consumer group keeps its position per topic; messages that keep failing
-- are parked in dead_letters with their error.
-- Ids are handed out before commit, so a reader going by id alone could pass
-- a row whose transaction commits later. Each row records its transaction;
-- readers take only rows of transactions older than every one still running
-- (txid below the snapshot's xmin: final, visible or never) in (txid, id) order.
ALTER TABLE outbox ADD COLUMN txid bigint NOT NULL DEFAULT txid_current();
CREATE INDEX outbox_txid_idx ON outbox (txid, id);

CREATE TABLE stream_offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    last_txid      bigint NOT NULL DEFAULT 0,
    last_id        bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic)
);

CREATE TABLE dead_letters (
    id             bigserial PRIMARY KEY,
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    outbox_id      bigint NOT NULL REFERENCES outbox (id),
    attempts       integer NOT NULL,
    error          text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer_group, outbox_id)
);

-- Which outbox rows belong to which topic (Kafka's topics, seed design).
CREATE FUNCTION outbox_topic_matches(topic text, event_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE topic
    WHEN 'booking-cancelled' THEN event_type = 'booking.cancelled'
    WHEN 'booking-confirmed' THEN event_type = 'booking.confirmed'
    WHEN 'waitlist-notification' THEN event_type IN ('waitlist.offered', 'waitlist.expired')
    WHEN 'event-cancelled' THEN event_type = 'event.cancelled'
    WHEN 'analytics-events' THEN true
    ELSE false END
$$;
