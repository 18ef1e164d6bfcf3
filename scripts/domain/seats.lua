--- seats: an event's seats as an inventory pool (evently.inventory, whose
-- engine is C: core/inventory.c). The pool row is the event: `available` of
-- `capacity`, open while the event is on sale; a granted claim's record is
-- the booking, and its outbox row is written by the same statement.
--
-- Takes are coalesced by the engine: while one statement for an event is in
-- flight, a worker queues further takes for it; the next statement serves
-- the whole queue in arrival order (first come, first served; one that does
-- not fit is skipped, later smaller ones may still fit), one UPDATE subtracts
-- the total, one INSERT writes the bookings and one the outbox rows. The
-- CHECK on available is the last guard.
--
-- With a per-user limit (rules/booking.lua max_per_user) the engine locks the
-- event row in a first statement of the batch's transaction and refuses a
-- request that would take its user over the limit, counting the user's
-- confirmed tickets read after the lock (see domain/ticket_limit.lua for why
-- that read is exact). A user appears at most once per batch then.
local inventory = require "evently.inventory"
local rules = require "rules.booking"
local limit = require "domain.ticket_limit"
local time = require "evently.time"
local runtime = require "evently.runtime"
local shared_gate = require "domain.shared_gate"
local sync = require "evently.sync"

local M = {}

M.COLUMNS = "id, event_id, user_id, quantity, status, total_cents, currency, created_at, cancelled_at"

-- The sold-out gate (core/gate.h has the design): a batch that leaves an
-- event with no seats closes this worker's gate (C) for GATE_SECONDS and the
-- event's shared gate in Redis (domain/shared_gate.lua) for every other
-- worker and instance. Any change
-- to the event (a cancellation, a capacity raise, anywhere) reopens it at
-- once through the cache's invalidation fan-out. The gate only ever refuses:
-- Postgres alone decides every sale.
local GATE_SECONDS = 1.0

M.pool = inventory.pool {
  name = "seats", table = "events", key = "id", available = "available", capacity = "capacity",
  open = [[status = 'published'
    AND (sales_start IS NULL OR sales_start <= now()) AND (sales_end IS NULL OR sales_end > now())
    AND (]] .. tostring(rules.allow_after_start == true) .. [[ OR starts_at > now())]],
  max_claim = "max_per_booking", touch = "updated_at",
  columns = "price_cents, currency",
  record = [[INSERT INTO bookings (id, event_id, user_id, quantity, status, total_cents, currency)
    SELECT g.id, $1, g.owner, g.quantity, 'confirmed', g.price_cents * g.quantity, g.currency FROM granted g
    RETURNING ]] .. M.COLUMNS,
  record_seq = "bookings_id_seq",
  after = {
    [[INSERT INTO outbox (event_type, aggregate_id, payload)
      SELECT 'booking.confirmed', r.event_id,
             jsonb_build_object('booking_id', r.id, 'event_id', r.event_id, 'user_id', r.user_id,
                                'quantity', r.quantity)
      FROM recorded r]],
    -- a take tagged with its Idempotency-Key stores the 201 answer with the
    -- booking (the document evently.json makes of the row, timestamps as
    -- evently.db gives them)
    [[UPDATE idempotency_keys k SET status = 201, response = jsonb_build_object(
        'id', r.id, 'event_id', r.event_id, 'user_id', r.user_id, 'quantity', r.quantity, 'status', r.status,
        'total_cents', r.total_cents, 'currency', r.currency,
        'created_at', regexp_replace(replace(r.created_at::text, ' ', 'T'), '\+00$', 'Z'), 'cancelled_at', NULL)
      FROM recorded r JOIN granted g ON g.id = r.id
      WHERE g.tag IS NOT NULL AND k.user_id = g.owner AND k.key = g.tag AND k.status IS NULL]],
  },
  owner_held = [[SELECT b.user_id AS owner, sum(b.quantity)::int AS held FROM bookings b
    WHERE b.event_id = $1 AND b.status = 'confirmed' AND b.user_id = ANY($3::bigint[])
    GROUP BY b.user_id]],
  on_empty = function(event_id, started_ms, max) shared_gate.close(event_id, started_ms, max) end,
}
local pool = M.pool
local core = inventory.core

-- How long a take may wait in the queue: until a few seconds before the
-- handler's deadline; then it is withdrawn and answered "busy", truthfully
-- not booked. Once its batch has started only the batch's answer is true
-- (the engine bounds a batch and answers "unknown" past that).
local QUEUE_WAIT
do
  local handler = runtime.config().handler_timeout or 30
  QUEUE_WAIT = math.min(40, math.max(handler * 0.5, handler - 5))
end

require("evently.cache").on_invalidate(function(key)
  local id = key:match("^event:(%d+)$")
  if id then pool:reopen(tonumber(id)) end
end)

-- Counters reach the shared /metrics region once a second: a shared counter
-- bumped per request would bounce one cache line between the workers.
local shared_learned = 0
local flushing = false
local function start_flushing()
  flushing = true
  if runtime.worker().slot < 0 then return end
  local last = core.stats()
  time.every(1, function()
    local now = core.stats()
    local function add(name, a, b) if a > b then runtime.count(name, a - b) end end
    -- gate refusals (C and Lua) reach evently_booking_gate_soldout_total from the worker (worker.c)
    add("evently_booking_batches_total", now.batches, last.batches)
    add("evently_booking_batch_requests_total", now.claims, last.claims)
    if shared_learned > 0 then runtime.count("evently_booking_gate_redis_total", shared_learned) end
    shared_learned, last = 0, now
  end)
end

--- true while this worker's own gate refuses quantity of the event (no I/O).
function M.gate_closed_here(event_id, quantity)
  return pool:gate_closed(event_id, quantity)
end

-- The sold-out gate before a take is queued (core/gate.h has the design):
-- this worker's own gate first; while it is open, the shared gate in Redis,
-- unless this worker's own batches found seats less than GATE_SECONDS ago
-- (core.selling: a selling event pays nothing for it). One read per event at a time:
-- concurrent takes wait for it.
local reading = {}
local function gate_closed(event_id, quantity)
  if pool:gate_closed(event_id, quantity) then return true end
  if core.selling("seats", event_id) then return false end
  local r = reading[event_id]
  if r then
    r:wait(1)
  else
    r = sync.event()
    reading[event_id] = r
    -- the reader's request may be aborted mid-read (client gone): its waiters
    -- and the next reader must not wait on it
    local _ <close> = setmetatable({}, { __close = function()
      if reading[event_id] == r then reading[event_id] = nil end
      r:set()
    end })
    local seen = core.changes("seats", event_id)
    local ok, max = pcall(shared_gate.read, event_id)
    if ok and max and core.changes("seats", event_id) == seen then -- no give-back heard meanwhile
      core.close("seats", event_id, max, GATE_SECONDS)
    end
  end
  if pool:gate_closed(event_id, quantity) then
    shared_learned = shared_learned + 1
    return true
  end
  return false
end

--- true when the sold-out gate refuses quantity now: this worker's, else the
-- shared one (one Redis read when this worker has not seen the event selling).
M.gate_closed = gate_closed

--- Takes quantity seats for user_id. Returns booking | nil, why, info where
-- why is "sold-out" (info.available), "too-many" (info.max_per_booking),
-- "limit-exceeded" (info.max_per_user, info.held), "closed" (not on sale, or
-- no such event), "busy" (withdrawn before its batch started: not booked),
-- "unknown" (its batch never answered: it may have booked) or a db error.
-- idempotency_key: the request's Idempotency-Key, claimed already (domain/
-- idempotency.lua): a granted take stores its 201 answer in the same statement.
-- Its caller asked the whole gate before claiming the key (routes/bookings.lua
-- book_once), so only this worker's own gate is asked again, not Redis.
function M.take(event_id, user_id, quantity, idempotency_key)
  if not flushing then start_flushing() end
  local refused
  if idempotency_key then
    refused = pool:gate_closed(event_id, quantity)
  else
    refused = gate_closed(event_id, quantity)
  end
  if refused then
    return nil, "sold-out", { available = 0 }
  end
  local row, why, info = pool:take(event_id, user_id, quantity,
    { limit = limit.max, queue_seconds = QUEUE_WAIT, tag = idempotency_key })
  return M.answer(row, why, info)
end

--- Maps a pool answer to the booking domain's words.
function M.answer(row, why, info)
  if row then return row end
  if why == "sold-out" then return nil, why, { available = info.left } end
  if why == "too-many" then return nil, why, { max_per_booking = info.max } end
  if why == "limit-exceeded" then return nil, why, limit.refusal(info.held) end
  return nil, why, info
end

--- A take inside the caller's transaction tx (an idempotent booking stores
-- its answer with it): the same statement, the same rules.
function M.take_in(tx, event_id, user_id, quantity)
  return M.answer(pool:take_in(tx, event_id, user_id, quantity, limit.max))
end

return M
