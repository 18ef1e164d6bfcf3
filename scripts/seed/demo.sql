-- Demo events, run by `evently serve` on the embedded database at every start
-- (never against a configured EVENTLY_DATABASE_URL). It inserts only into a
-- database with no events yet: the guard is here, with the schema it knows,
-- so the core only runs the file.
INSERT INTO events (name, description, venue, starts_at, ends_at, capacity, available, price_cents,
                    currency, max_per_booking, status)
SELECT * FROM (VALUES
  ('Lua Conf 2027', 'Talks on embedding Lua in fast servers.', 'Rio Convention Center',
   now() + interval '60 days', now() + interval '61 days', 300, 300, 12000, 'EUR', 4, 'published'),
  ('Midnight Jazz Quartet', 'Late set, standing room only.', 'Blue Room',
   now() + interval '14 days', now() + interval '14 days 3 hours', 80, 80, 3500, 'EUR', 6, 'published'),
  ('Flash Sale: Stadium Tour', 'One night, 50,000 seats, everybody at once.', 'Olympic Stadium',
   now() + interval '120 days', now() + interval '120 days 4 hours', 50000, 50000, 8900, 'EUR', 10, 'published'),
  ('Postgres Internals Workshop', 'Hands-on: locks, MVCC, and the planner.', 'Room 101',
   now() + interval '30 days', now() + interval '30 days 6 hours', 20, 20, 45000, 'EUR', 2, 'published'),
  ('Secret Gig (draft)', 'Not announced yet.', 'TBA',
   now() + interval '90 days', NULL, 150, 150, 2000, 'EUR', 4, 'draft')) AS demo
WHERE NOT EXISTS (SELECT 1 FROM events);
