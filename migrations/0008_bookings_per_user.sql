-- "Max tickets per user per event" (rules/booking.lua max_per_user): a take
-- sums the user's confirmed tickets for the event under the event row's lock,
-- so the sum is read often and must stay a short index range scan.
CREATE INDEX bookings_event_user_confirmed_idx ON bookings (event_id, user_id) WHERE status = 'confirmed';
