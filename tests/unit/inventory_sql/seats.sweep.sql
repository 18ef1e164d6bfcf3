WITH h AS (UPDATE inventory_holds SET state = 'expired', settled_at = now()
  WHERE id IN (SELECT id FROM inventory_holds WHERE pool = 'seats' AND state = 'held'
               AND expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
    AND state = 'held'
  RETURNING id, key, owner, quantity),
back AS (UPDATE public.events t SET available = t.available + s.total, updated_at = now()
  FROM (SELECT key, sum(quantity) AS total FROM h GROUP BY key) s WHERE t.id = s.key
  RETURNING t.id AS key, t.available AS available)
SELECT h.id, h.key, h.owner, h.quantity, back.available FROM h JOIN back ON back.key = h.key
ORDER BY h.id