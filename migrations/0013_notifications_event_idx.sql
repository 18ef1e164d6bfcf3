-- flows/recipients.lua finds the holders told of an event's cancellation by
-- notifications.payload->>'event_id' (type event.cancelled). Without an index
-- that read scanned every notification ever written, so it grew with history
-- (issue 14). Partial: only those rows are ever read this way; user_id in the
-- key gives the DISTINCT ... ORDER BY user_id from the index.
CREATE INDEX notifications_event_cancelled_idx ON notifications ((payload->>'event_id'), user_id)
  WHERE type = 'event.cancelled';
