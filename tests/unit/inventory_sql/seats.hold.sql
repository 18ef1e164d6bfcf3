WITH p AS (UPDATE public.events SET available = available - $3, updated_at = now() WHERE id = $1 AND available >= $3 AND $3 >= 1
  AND $3 <= (max_per_booking) AND (status = 'published' AND starts_at > now()) RETURNING id AS key, available AS available)
INSERT INTO inventory_holds (pool, key, owner, quantity, expires_at)
SELECT 'seats', p.key, $2, $3, now() + make_interval(secs => $4) FROM p
RETURNING id, pool, key, owner, quantity, state, expires_at, created_at