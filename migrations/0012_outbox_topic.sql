-- The topic of an outbox row, in one place: the Kafka relay publishes each row
-- to outbox_topic(event_type) (and to analytics-events), and in-process
-- consumers select their topic's rows with outbox_topic_matches, now written
-- in terms of it (before, the relay kept its own copy of the mapping in Lua).
CREATE FUNCTION outbox_topic(event_type text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE event_type
    WHEN 'booking.cancelled' THEN 'booking-cancelled'
    WHEN 'booking.confirmed' THEN 'booking-confirmed'
    WHEN 'waitlist.offered' THEN 'waitlist-notification'
    WHEN 'waitlist.expired' THEN 'waitlist-notification'
    WHEN 'event.cancelled' THEN 'event-cancelled'
  END
$$;

CREATE OR REPLACE FUNCTION outbox_topic_matches(topic text, event_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(topic = 'analytics-events' OR outbox_topic(event_type) = topic, false)
$$;
