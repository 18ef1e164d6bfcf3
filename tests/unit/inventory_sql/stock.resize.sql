UPDATE items SET left = left + ($2 - total), total = $2 WHERE id = $1 AND total - left <= $2
RETURNING total AS capacity, left AS available