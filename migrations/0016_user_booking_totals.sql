-- A user's bookings total, kept by the statements that write bookings, so
-- GET /bookings answers its "total" with one row read instead of counting
-- every booking the user ever made (issue 14: the soak's p99 grew with it).
-- Bookings are never updated to another user; the triggers count inserts and
-- deletes per statement (a coalesced batch is one statement: one upsert per
-- user in it, in user order so two batches never wait on each other in a
-- cycle).
CREATE TABLE user_booking_totals (
    user_id  bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    bookings bigint NOT NULL CHECK (bookings >= 0)
);

CREATE FUNCTION user_booking_totals_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO user_booking_totals AS t (user_id, bookings)
  SELECT user_id, count(*) FROM added GROUP BY user_id ORDER BY user_id
  ON CONFLICT (user_id) DO UPDATE SET bookings = t.bookings + excluded.bookings;
  RETURN NULL;
END $$;

CREATE FUNCTION user_booking_totals_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE user_booking_totals t SET bookings = t.bookings - r.n
  FROM (SELECT user_id, count(*) AS n FROM removed GROUP BY user_id ORDER BY user_id) r
  WHERE t.user_id = r.user_id;
  RETURN NULL;
END $$;

CREATE TRIGGER bookings_count_added AFTER INSERT ON bookings
  REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION user_booking_totals_add();
CREATE TRIGGER bookings_count_removed AFTER DELETE ON bookings
  REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION user_booking_totals_remove();

-- The bookings made before this migration. CREATE TRIGGER above locks out
-- writers of bookings until this file commits, so none is missed or counted twice.
INSERT INTO user_booking_totals (user_id, bookings)
SELECT user_id, count(*) FROM bookings GROUP BY user_id;
