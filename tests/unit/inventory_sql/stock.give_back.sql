UPDATE items SET left = left + $2 WHERE id = $1 AND $2 >= 1
  AND left + $2 + (SELECT coalesce(sum(quantity), 0) FROM inventory_holds
                 WHERE pool = 'stock' AND key = $1 AND state = 'held') <= total
RETURNING left AS available