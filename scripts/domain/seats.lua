--- seats: coalesced seat takes. While one statement for an event is in
-- flight, a worker queues further takes for that event; when it returns, one
-- statement serves the whole queue: requests numbered in arrival order, a
-- walk over them against available decides which fit (first come, first
-- served; one that does not fit is skipped, later smaller ones may still fit),
-- one UPDATE subtracts the total, one INSERT writes the bookings and one the
-- outbox rows, and each waiting coroutine is woken with its own answer. One
-- lock acquisition then carries a whole batch of bookings; every invariant of
-- a single take holds (the event row is locked for the statement, and the
-- CHECK on available is the last guard).
--
-- With a per-user limit (rules/booking.lua max_per_user) the walk also
-- refuses a request that would take its user over it, counting the user's
-- confirmed tickets read in a transaction that locked the event row first
-- (see domain/ticket_limit.lua for why that read is exact). A user appears at
-- most once per batch then: their further requests wait for the next batch,
-- so each request is checked against everything granted before it.
local db = require "evently.db"
local sync = require "evently.sync"
local rules = require "rules.booking"
local limit = require "domain.ticket_limit"
local bookings_columns = "id, event_id, user_id, quantity, status, total_cents, currency, created_at, cancelled_at"

local M = {}

-- The batch statement, in two shapes: without a per-user limit (the walk
-- only counts seats) and with one ($6; the walk also refuses a request that
-- would take its user's confirmed tickets, HELD, over it). Composed once.
local HEAD = [[
WITH RECURSIVE
req AS (SELECT * FROM unnest($2::int[], $3::bigint[], $4::int[]) AS t(seq, user_id, quantity)),
ev AS (
  SELECT id, available, price_cents, currency, max_per_booking FROM events
  WHERE id = $1 AND status = 'published'
    AND (sales_start IS NULL OR sales_start <= now()) AND (sales_end IS NULL OR sales_end > now())
    AND ($5 OR starts_at > now())
  FOR UPDATE),
]]

local WALK = [[
walk AS (
  SELECT 0 AS seq, ev.available AS left_after, 0 AS took FROM ev
  UNION ALL
  SELECT q.seq,
    CASE WHEN q.quantity <= w.left_after AND q.quantity <= ev.max_per_booking THEN w.left_after - q.quantity ELSE w.left_after END,
    CASE WHEN q.quantity <= w.left_after AND q.quantity <= ev.max_per_booking THEN q.quantity ELSE 0 END
  FROM walk w JOIN req q ON q.seq = w.seq + 1 CROSS JOIN ev),
]]

local WALK_LIMITED = [[
held AS (
  SELECT b.user_id, sum(b.quantity)::int AS held FROM bookings b
  WHERE b.event_id = $1 AND b.status = 'confirmed' AND b.user_id = ANY($3::bigint[])
  GROUP BY b.user_id),
walk AS (
  SELECT 0 AS seq, ev.available AS left_after, 0 AS took, false AS over_limit, 0 AS held FROM ev
  UNION ALL
  SELECT q.seq,
    CASE WHEN f.fits THEN w.left_after - q.quantity ELSE w.left_after END,
    CASE WHEN f.fits THEN q.quantity ELSE 0 END,
    l.over_limit, l.held
  FROM walk w JOIN req q ON q.seq = w.seq + 1 CROSS JOIN ev
  CROSS JOIN LATERAL (SELECT coalesce((SELECT h.held FROM held h WHERE h.user_id = q.user_id), 0) AS held) u
  CROSS JOIN LATERAL (SELECT q.quantity + u.held > $6::int AS over_limit, u.held) l
  CROSS JOIN LATERAL (SELECT q.quantity <= w.left_after AND q.quantity <= ev.max_per_booking
      AND NOT l.over_limit AS fits) f),
]]

local TAIL = [[
win AS MATERIALIZED (
  SELECT q.seq, q.user_id, q.quantity, nextval('bookings_id_seq') AS id
  FROM walk w JOIN req q USING (seq) WHERE w.took > 0),
upd AS (
  UPDATE events e SET available = e.available - t.total, updated_at = now()
  FROM (SELECT sum(quantity) AS total FROM win) t
  WHERE e.id = $1 AND t.total > 0
  RETURNING e.available),
b AS (
  INSERT INTO bookings (id, event_id, user_id, quantity, status, total_cents, currency)
  SELECT win.id, $1, win.user_id, win.quantity, 'confirmed', ev.price_cents * win.quantity, ev.currency
  FROM win, ev
  RETURNING ]] .. bookings_columns .. [[),
o AS (
  INSERT INTO outbox (event_type, aggregate_id, payload)
  SELECT 'booking.confirmed', b.event_id,
         jsonb_build_object('booking_id', b.id, 'event_id', b.event_id, 'user_id', b.user_id, 'quantity', b.quantity)
  FROM b)
SELECT 1 AS kind, win.seq, NULL::int AS available, NULL::int AS max_per_booking, b.*
  FROM win JOIN b ON b.id = win.id
UNION ALL
SELECT 2, 0, (SELECT min(left_after) FROM walk), ev.max_per_booking,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL::timestamptz, NULL::timestamptz
  FROM ev]]

local OVER_LIMIT = "\n" .. [[
UNION ALL
SELECT 3, w.seq, w.held, NULL, -- over the per-user limit: available carries the user's held tickets
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL::timestamptz, NULL::timestamptz
  FROM walk w WHERE w.over_limit]]

local BATCH = HEAD .. WALK .. TAIL
local BATCH_LIMITED = HEAD .. WALK_LIMITED .. TAIL .. OVER_LIMIT

local queues = {} -- event id -> { running = bool, waiting = {items} }

-- The sold-out gate: an event seen with no seats left answers "sold out" from
-- this worker's memory for at most GATE seconds, without a round trip. Any
-- change to the event (a cancellation, a capacity raise, on any worker of any
-- instance) reopens it at once through the cache's invalidation fan-out; the
-- short expiry bounds a "sold out" that a lost message would leave behind.
-- The gate only ever refuses: Postgres alone decides every sale.
-- Its shared level is a mark in Redis (domain/soldout_mark.lua): a batch that
-- sees the event sold out writes it, and a worker that does not know the
-- event reads it before its next batch would go to Postgres.
local GATE = 1.0
local soldout = {}
local changes = {} -- event id -> invalidations heard (a Redis read racing one is dropped)
local time = require "evently.time"
local runtime = require "evently.runtime"
local mark = require "domain.soldout_mark"

-- How long a take waits. Queued (its batch not started): until a few seconds
-- before the handler's deadline, then it is withdrawn and answered "busy",
-- truthfully not booked. Once its batch has started the seats may be taken
-- at any moment, so only the batch's own answer is true: the take waits for
-- it. A batch ends by itself (every call in it has a timeout); BATCH_WAIT is
-- the last resort, answered "unknown".
local QUEUE_WAIT, BATCH_WAIT
do
  local c = runtime.config()
  local handler = c.handler_timeout or 30
  QUEUE_WAIT = math.min(40, math.max(handler * 0.5, handler - 5))
  BATCH_WAIT = ((c.db_acquire_timeout_ms or 5000) + 2 * (c.db_statement_timeout_ms or 30000)) / 1000 + 5
end

require("evently.cache").on_invalidate(function(key)
  local id = key:match("^event:(%d+)$")
  if id then
    id = tonumber(id)
    soldout[id] = nil
    changes[id] = (changes[id] or 0) + 1
  end
end)

-- Counters add up here and reach the shared /metrics region once a second:
-- a shared counter bumped per request would bounce one cache line between
-- the workers at every sold-out answer.
local counts = { gate = 0, batches = 0, batched = 0, shared = 0 }
local flushing = false
local function count(name, n)
  counts[name] = counts[name] + n
  if not flushing and runtime.worker().slot >= 0 then
    flushing = true
    time.every(1, function()
      if counts.gate > 0 then runtime.count("evently_booking_gate_soldout_total", counts.gate) end
      if counts.batches > 0 then runtime.count("evently_booking_batches_total", counts.batches) end
      if counts.batched > 0 then runtime.count("evently_booking_batch_requests_total", counts.batched) end
      if counts.shared > 0 then runtime.count("evently_booking_gate_redis_total", counts.shared) end
      counts.gate, counts.batches, counts.batched, counts.shared = 0, 0, 0, 0
    end)
  end
end

-- Closed for quantity when the event is known sold out and quantity is one a
-- booking may ask for (a larger one is a 422, which the full path answers).
local function gate_closed(event_id, quantity)
  local g = soldout[event_id]
  if not g then return false end
  if g.until_ > time.monotonic() then return quantity <= g.max end
  soldout[event_id] = nil
  return false
end

--- true while this worker knows the event has no seats left (see the gate above).
function M.sold_out(event_id, quantity)
  if gate_closed(event_id, quantity) then
    count("gate", 1)
    return true
  end
  return false
end

-- One statement for the batch; with a per-user limit, after the lock
-- statement in the same transaction (so the users' sums are current).
local function batch_query(event_id, seqs, users, qtys)
  if not limit.max then
    return db.query(BATCH, event_id, seqs, users, qtys, rules.allow_after_start)
  end
  local ok, rows, err = pcall(db.transaction, function(tx)
    local locked, lerr = limit.lock(tx, event_id)
    if not locked then error(lerr, 0) end
    local res, qerr = tx.query(BATCH_LIMITED, event_id, seqs, users, qtys, rules.allow_after_start, limit.max)
    if not res then error(qerr, 0) end
    return res
  end, { retries = 2 }) -- a deadlock (say, with an event's cancellation) is retried, not answered 503
  if not ok then return nil, rows end
  return rows, err
end

-- Runs one batch; returns the event's summary row (nil: not on sale).
local function run_batch(event_id, batch)
  local started = mark.clock()
  local seqs, users, qtys = {}, {}, {}
  for i, item in ipairs(batch) do
    seqs[i], users[i], qtys[i] = i, item.user_id, item.quantity
  end
  local function pg_array(t) return "{" .. table.concat(t, ",") .. "}" end
  local rows, err = batch_query(event_id, pg_array(seqs), pg_array(users), pg_array(qtys))
  if not rows then
    for _, item in ipairs(batch) do item.err = err end
    return
  end
  local summary
  for _, r in ipairs(rows) do
    if r.kind == 1 then
      local item = batch[r.seq]
      r.kind, r.seq, r.available, r.max_per_booking = nil, nil, nil, nil
      item.booking = r
    elseif r.kind == 3 then -- over the per-user limit
      batch[r.seq].held = r.available
    else
      summary = r
    end
  end
  if summary and summary.available == 0 then
    soldout[event_id] = { until_ = time.monotonic() + GATE, max = summary.max_per_booking }
    time.after(0, mark.mark, event_id, started, summary.max_per_booking) -- the answers need not wait for it
  end
  count("batches", 1)
  count("batched", #batch)
  for _, item in ipairs(batch) do
    if not item.booking then
      if not summary then
        item.why = "closed" -- not on sale or no such event: the caller finds out which
      elseif item.quantity > summary.max_per_booking then
        item.why = "too-many"
        item.ev = { max_per_booking = summary.max_per_booking }
      elseif item.held then
        item.why, item.ev = "limit-exceeded", limit.refusal(item.held)
      else
        item.why = "sold-out"
        item.ev = { available = summary.available }
      end
    end
  end
  return summary
end

-- Before a batch goes to Postgres, learn from Redis whether another worker
-- saw the event sold out; skipped while this worker's own last batch found
-- seats less than GATE seconds ago, so a selling event pays nothing for it.
local function learn_shared(event_id, q)
  if q.open_until and q.open_until > time.monotonic() then return end
  local seen = changes[event_id]
  local max = mark.read(event_id)
  if max and changes[event_id] == seen then -- no give-back heard while Redis answered
    soldout[event_id] = { until_ = time.monotonic() + GATE, max = max }
    return true
  end
  return false
end

-- Answers the items the gate now refuses (counted as counter: "shared" when
-- the gate was just learned from Redis); returns the rest.
local function refuse_gated(event_id, batch, counter)
  local rest = {}
  for _, item in ipairs(batch) do
    if gate_closed(event_id, item.quantity) then
      item.why, item.ev = "sold-out", { available = 0 }
      count(counter, 1)
      item.done:set()
    else
      rest[#rest + 1] = item
    end
  end
  return rest
end

-- The next batch out of the queue: every live item, except that with a
-- per-user limit a user's second request waits for the next batch.
local function next_batch(waiting)
  local batch, later, seen = {}, {}, {}
  for _, item in ipairs(waiting) do
    if item.cancelled then -- dropped: its request has gone
    elseif limit.max and seen[item.user_id] then
      later[#later + 1] = item
    else
      seen[item.user_id] = true
      batch[#batch + 1] = item
    end
  end
  return batch, later
end

-- Batches run in a coroutine of their own (a timer), never in a request's:
-- a request that is aborted (client gone, deadline) while it waits cannot
-- stop the queue, and its item is skipped if its batch has not started.
local function runner(event_id, q)
  local ok, err = pcall(function()
    while #q.waiting > 0 do
      local learned = learn_shared(event_id, q)
      local batch, later = next_batch(q.waiting)
      q.waiting = later
      batch = refuse_gated(event_id, batch, learned and "shared" or "gate")
      for _, item in ipairs(batch) do item.started = true end
      if #batch > 0 then
        local rok, res = pcall(run_batch, event_id, batch)
        if not rok then
          for _, item in ipairs(batch) do item.err = item.err or { kind = "error", message = tostring(res) } end
        elseif res and res.available > 0 then
          q.open_until = time.monotonic() + GATE
        end
        for _, item in ipairs(batch) do item.done:set() end
      end
    end
  end)
  q.running = false
  if not ok then
    for _, item in ipairs(q.waiting) do item.err = { kind = "error", message = tostring(err) }; item.done:set() end
    q.waiting = {}
  end
end

local function answered(item) return item.booking or item.err or item.why end

--- Takes quantity seats for user_id. Returns booking | nil, why, info where
-- why is "sold-out" (info.available), "too-many" (info.max_per_booking),
-- "limit-exceeded" (info.max_per_user, info.held), "closed" (not on sale, or
-- no such event), "busy" (withdrawn before its batch started: not booked),
-- "unknown" (its batch never answered: it may have booked) or a db error.
function M.take(event_id, user_id, quantity)
  if gate_closed(event_id, quantity) then
    count("gate", 1)
    return nil, "sold-out", { available = 0 }
  end
  local q = queues[event_id]
  if not q then
    q = { running = false, waiting = {} }
    queues[event_id] = q
  end
  local item = { user_id = user_id, quantity = quantity, done = sync.event() }
  -- an abort or a timeout leaves the item behind: mark it so no later batch takes it
  local _ <close> = setmetatable({}, { __close = function() item.cancelled = true end })
  table.insert(q.waiting, item)
  if not q.running then
    q.running = true
    time.after(0, runner, event_id, q)
  end
  item.done:wait(QUEUE_WAIT)
  if item.started and not answered(item) then item.done:wait(BATCH_WAIT) end
  if item.booking then return item.booking end
  if item.err then return nil, item.err end
  if item.why then return nil, item.why, item.ev end
  return nil, item.started and "unknown" or "busy" -- withdrawn by the <close> above when not started
end

return M
