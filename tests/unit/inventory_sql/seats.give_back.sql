UPDATE public.events SET available = available + $2, updated_at = now() WHERE id = $1 AND $2 >= 1
  AND available + $2 + (SELECT coalesce(sum(quantity), 0) FROM inventory_holds
                 WHERE pool = 'seats' AND key = $1 AND state = 'held') <= capacity
RETURNING available AS available