UPDATE inventory_holds SET state = 'confirmed', settled_at = now()
WHERE id = $1 AND pool = 'seats' AND state = 'held' AND expires_at > now()
  AND ($2::bigint IS NULL OR owner = $2)
RETURNING id, pool, key, owner, quantity, state, expires_at, created_at