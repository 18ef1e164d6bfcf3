UPDATE public.events SET available = available + ($2 - capacity), capacity = $2, updated_at = now() WHERE id = $1 AND capacity - available <= $2
RETURNING capacity AS capacity, available AS available