WITH h AS (UPDATE inventory_holds SET state = 'released', settled_at = now()
  WHERE id = $1 AND pool = 'stock' AND state = 'held' AND ($2::bigint IS NULL OR owner = $2)
  RETURNING id, key, owner, quantity),
p AS (UPDATE items t SET left = t.left + h.quantity FROM h WHERE t.id = h.key RETURNING t.left AS available)
SELECT h.id, h.key, h.owner, h.quantity, p.available FROM h, p