WITH p AS (UPDATE items SET left = left - $3 WHERE id = $1 AND left >= $3 AND $3 >= 1
  AND $3 <= (2147483647) AND (true) RETURNING id AS key, left AS available)
INSERT INTO inventory_holds (pool, key, owner, quantity, expires_at)
SELECT 'stock', p.key, $2, $3, now() + make_interval(secs => $4) FROM p
RETURNING id, pool, key, owner, quantity, state, expires_at, created_at