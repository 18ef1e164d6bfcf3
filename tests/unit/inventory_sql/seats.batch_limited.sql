WITH RECURSIVE
req AS (SELECT * FROM unnest($2::int[], $3::bigint[], $4::int[], $5::text[]) AS t(seq, owner, quantity, tag)),
pool AS (SELECT id AS key, available AS available, (max_per_booking)::int AS max_claim, price_cents FROM public.events
  WHERE id = $1 AND (status = 'published' AND starts_at > now()) FOR UPDATE),
held AS (SELECT user_id AS owner, sum(quantity)::int AS held FROM bookings WHERE event_id = $1 AND user_id = ANY($3::bigint[]) GROUP BY user_id),
walk AS (
  SELECT 0 AS seq, pool.available AS left_after, 0 AS took, false AS over, 0 AS held FROM pool
  UNION ALL
  SELECT q.seq,
    CASE WHEN f.fits THEN w.left_after - q.quantity ELSE w.left_after END,
    CASE WHEN f.fits THEN q.quantity ELSE 0 END, f.over, f.held
  FROM walk w JOIN req q ON q.seq = w.seq + 1 CROSS JOIN pool
  CROSS JOIN LATERAL (SELECT (q.quantity + coalesce((SELECT h.held FROM held h WHERE h.owner = q.owner), 0)) > $6::int AS over, coalesce((SELECT h.held FROM held h WHERE h.owner = q.owner), 0) AS held) o
  CROSS JOIN LATERAL (SELECT o.over, o.held, q.quantity <= w.left_after
      AND q.quantity <= pool.max_claim AND NOT o.over AS fits) f),
granted AS MATERIALIZED (
  SELECT q.seq, q.owner, q.quantity, q.tag, nextval('bookings_id_seq') AS id, price_cents
  FROM walk w JOIN req q USING (seq) CROSS JOIN pool WHERE w.took > 0),
taken AS (
  UPDATE public.events t SET available = pool.available - s.total, updated_at = now()
  FROM pool, (SELECT sum(quantity) AS total FROM granted) s
  WHERE t.id = $1 AND s.total > 0 RETURNING t.available),
recorded AS (INSERT INTO bookings (id, event_id, user_id, quantity, price_cents) SELECT g.id, $1, g.owner, g.quantity, g.price_cents FROM granted g RETURNING id),
after_1 AS (INSERT INTO outbox (topic, payload) SELECT 'booking', r.id::text FROM recorded r),
after_2 AS (UPDATE answers SET done = true FROM granted g WHERE answers.tag = g.tag),
last AS (SELECT min(left_after) AS left_after FROM walk)
SELECT w.seq AS inv_seq, w.took AS inv_took, w.over AS inv_over, w.held AS inv_held,
       last.left_after AS inv_left, pool.max_claim AS inv_max, r.*
FROM walk w CROSS JOIN pool CROSS JOIN last
  LEFT JOIN granted g ON g.seq = w.seq LEFT JOIN recorded r ON r.id = g.id
WHERE w.seq > 0