--- bookings: seats taken and given back atomically.
-- take: the seats pool of evently.inventory (domain/seats.lua): one
-- conditional UPDATE of the event row feeding the booking INSERT and the
-- outbox row, in a single round trip, coalesced with concurrent takes; never
-- read-then-write. cancel: flips the booking only if it is still confirmed
-- and gives exactly its seats back in the same statement, so concurrent
-- cancels restore seats once.
local db = require "evently.db"
local rules = require "rules.booking"
local limit = require "domain.ticket_limit"

local pages = require "domain.pages"

local M = {}

local seats = require "domain.seats"
local COLUMNS = seats.COLUMNS
M.COLUMNS = COLUMNS

--- Takes quantity seats of event_id for user_id. Returns booking, or nil and
-- a reason: "not-found" | "not-on-sale" | "too-many" | "limit-exceeded"
-- (with max_per_user and held) | "sold-out" (with the event's available) |
-- "busy" (not booked: retry) | "unknown" (may have booked) | a db error.
-- q: db, or a transaction (when an idempotency key is stored with the booking);
-- after_take(row) runs in that transaction when seats were taken. Coalesced
-- (no q), idempotency_key makes the batch store the 201 answer itself.
function M.create(event_id, user_id, quantity, q, after_take, idempotency_key)
  local row, why, info
  if not q and rules.coalesce then -- the common case: batched with concurrent takes
    row, why, info = seats.take(event_id, user_id, quantity, idempotency_key)
  elseif not q and limit.max then -- a single limited take locks the row first: a transaction
    return db.transaction(function(tx) return M.create(event_id, user_id, quantity, tx, after_take) end)
  else -- the pool's statement for one claim, in q
    row, why, info = seats.take_in(q or db, event_id, user_id, quantity)
    if row and after_take then after_take(row) end
  end
  if row then return row end
  if why ~= "closed" then return nil, why, info end
  q = q or db
  -- refused: say why (this read is not part of the decision, only of the answer)
  local ev, eerr = q.one([[SELECT status, available, max_per_booking,
      (sales_start IS NULL OR sales_start <= now()) AND (sales_end IS NULL OR sales_end > now())
        AND ($2 OR starts_at > now()) AS on_sale,
      (SELECT coalesce(sum(quantity), 0)::int FROM bookings
        WHERE event_id = $1 AND user_id = $3 AND status = 'confirmed') AS held
    FROM events WHERE id = $1]], event_id, rules.allow_after_start, user_id)
  if eerr then return nil, eerr end
  if not ev then return nil, "not-found" end
  if ev.status ~= "published" or not ev.on_sale then return nil, "not-on-sale", ev end
  if quantity > ev.max_per_booking then return nil, "too-many", ev end
  if limit.max and quantity + ev.held > limit.max then return nil, "limit-exceeded", limit.refusal(ev.held) end
  return nil, "sold-out", ev
end

local CANCEL = [[
WITH b AS (
  UPDATE bookings SET status = 'cancelled', cancelled_at = now()
  WHERE id = $1 AND status = 'confirmed' AND ($2::bigint IS NULL OR user_id = $2)
  RETURNING ]] .. COLUMNS .. [[),
ev AS (
  UPDATE events e SET available = e.available + b.quantity, updated_at = now()
  FROM b WHERE e.id = b.event_id
  RETURNING e.id, e.available),
o AS (
  INSERT INTO outbox (event_type, aggregate_id, payload)
  SELECT 'booking.cancelled', b.event_id,
         jsonb_build_object('booking_id', b.id, 'event_id', b.event_id, 'user_id', b.user_id,
                            'quantity', b.quantity, 'available', ev.available)
  FROM b, ev)
SELECT b.* FROM b]]

--- Cancels a confirmed booking (owner_id nil: any owner, for admins). The
-- freed seats go to the waitlist first, in the same transaction. Returns the
-- booking as it now is and whether this call cancelled it; a second cancel
-- returns it unchanged and gives nothing back. nil when there is no such
-- booking (for this owner).
function M.cancel(id, owner_id)
  return db.transaction(function(tx)
    local row, err = tx.one(CANCEL, id, owner_id)
    if err then error(err, 0) end
    if row then
      require("domain.waitlist").offer(tx, row.event_id)
      return row, nil, true
    end
    return tx.one("SELECT " .. COLUMNS .. " FROM bookings WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)",
      id, owner_id)
  end, { retries = 3 }) -- a deadlock with an event cancellation is retried, not answered 503
end

local CONVERT = [[
WITH ev AS (
  SELECT id FROM events WHERE id = $3 AND status = 'published' FOR SHARE),
w AS (
  UPDATE waitlist SET status = 'converted', updated_at = now()
  WHERE id = $1 AND user_id = $2 AND event_id = $3 AND status = 'offered' AND offer_expires_at > now()
    AND EXISTS (SELECT 1 FROM ev)
    AND ($4::int IS NULL OR quantity + (SELECT coalesce(sum(quantity), 0) FROM bookings
                                        WHERE event_id = $3 AND user_id = $2 AND status = 'confirmed') <= $4)
  RETURNING id, event_id, quantity, hold_id),
b AS (
  INSERT INTO bookings (event_id, user_id, quantity, status, total_cents, currency, waitlist_entry_id)
  SELECT w.event_id, $2, w.quantity, 'confirmed', e.price_cents * w.quantity, e.currency, w.id
  FROM w JOIN events e ON e.id = w.event_id
  RETURNING ]] .. COLUMNS .. [[),
o AS (
  INSERT INTO outbox (event_type, aggregate_id, payload)
  SELECT 'booking.confirmed', b.event_id,
         jsonb_build_object('booking_id', b.id, 'event_id', b.event_id, 'user_id', b.user_id,
                            'quantity', b.quantity, 'waitlist_entry_id', $1::bigint)
  FROM b)
SELECT b.*, w.hold_id AS offer_hold_id FROM b, w]]

--- Turns a waitlist offer into a booking: the seats are already held, so
-- nothing is taken from the event, but the tickets count toward the user's
-- limit. Returns booking | nil, "no-offer" (not theirs, not offered, expired
-- or another event) | nil, "wrong-quantity", entry | nil, "limit-exceeded", info.
function M.convert(entry_id, user_id, event_id, quantity, q, after_take)
  if not q then -- the offer's hold is confirmed with the booking, atomically
    -- (a deadlock with the sweeper, which locks hold, event, entry in that order, is retried)
    return db.transaction(function(tx) return M.convert(entry_id, user_id, event_id, quantity, tx, after_take) end,
      { retries = 3 })
  end
  if limit.max then
    local ok, lerr = limit.lock(q, event_id)
    if not ok then return nil, lerr end
  end
  local entry, err = q.one("SELECT quantity, hold_id FROM waitlist WHERE id = $1 AND user_id = $2", entry_id, user_id)
  if err then return nil, err end
  if entry and entry.quantity ~= quantity then return nil, "wrong-quantity", entry end
  local row
  row, err = q.one(CONVERT, entry_id, user_id, event_id, limit.max)
  if err then return nil, err end
  if not row then
    local held = entry and limit.max and limit.held(q, event_id, user_id)
    if held and held + entry.quantity > limit.max then return nil, "limit-exceeded", limit.refusal(held) end
    return nil, "no-offer"
  end
  -- the entry was offered and unexpired under its row lock, and the sweeper
  -- settles hold and entry in one transaction: the hold is still held (if
  -- not, raising rolls the conversion back). Its id comes from the UPDATE,
  -- not from the read above: an offer may have committed in between.
  local hold_id = row.offer_hold_id
  row.offer_hold_id = nil
  local hold
  hold, err = require("domain.seats").pool:confirm(q, hold_id, user_id)
  if not hold then error(err or "waitlist entry " .. entry_id .. ": its hold is not held", 0) end
  if after_take then after_take(row) end
  return row
end

-- Two statements in one transaction: the first locks the event row (waiting
-- for bookings in flight to commit); the second starts with a fresh snapshot,
-- so it sees and cancels every booking committed before it, too.
local CANCEL_EVENT_ROW = [[
UPDATE events SET status = 'cancelled', updated_at = now()
WHERE id = $1 AND status <> 'cancelled' RETURNING id]]

local CANCEL_EVENT_REST = [[
WITH b AS (
  UPDATE bookings SET status = 'cancelled', cancelled_at = now()
  WHERE event_id = $1 AND status = 'confirmed'
  RETURNING id, user_id, event_id, quantity),
w AS (
  UPDATE waitlist SET status = 'cancelled', offer_expires_at = NULL, updated_at = now()
  WHERE event_id = $1 AND status IN ('waiting', 'offered')
  RETURNING id, user_id, hold_id),
h AS ( -- offers' holds end with the event (its seats are not for sale any more)
  UPDATE inventory_holds SET state = 'released', settled_at = now()
  WHERE id IN (SELECT hold_id FROM w) AND state = 'held'),
o AS (
  INSERT INTO outbox (event_type, aggregate_id, payload)
  SELECT 'event.cancelled', $1, jsonb_build_object('event_id', $1::bigint)
  UNION ALL
  SELECT 'booking.cancelled', b.event_id, jsonb_build_object('booking_id', b.id, 'event_id', b.event_id,
         'user_id', b.user_id, 'quantity', b.quantity, 'reason', 'event.cancelled') FROM b),
n AS (
  INSERT INTO notifications (user_id, type, payload)
  SELECT DISTINCT b.user_id, 'event.cancelled', jsonb_build_object('event_id', $1::bigint) FROM b
  UNION
  SELECT DISTINCT w.user_id, 'event.cancelled', jsonb_build_object('event_id', $1::bigint) FROM w)
SELECT (SELECT count(*) FROM b) AS bookings_cancelled]]

--- Cancels an event with all its bookings and waitlist entries, notifying the
-- holders. Returns {bookings_cancelled, changed} | nil, err.
function M.cancel_event(event_id)
  return db.transaction(function(tx)
    local ev, err = tx.one(CANCEL_EVENT_ROW, event_id)
    if err then error(err, 0) end
    if not ev then return { bookings_cancelled = 0, changed = 0 } end
    local res
    res, err = tx.one(CANCEL_EVENT_REST, event_id)
    if err then error(err, 0) end
    res.changed = 1
    return res
  end, { retries = 3 })
end

function M.get(id, owner_id)
  return db.one("SELECT " .. COLUMNS .. " FROM bookings WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)",
    id, owner_id)
end

--- Lists bookings, newest first: one user's, or (owner_id nil) an event's or all.
-- (one statement per case: "$1 IS NULL OR user_id = $1" would keep the
-- planner from the indexes and read every booking)
function M.list(owner_id, event_id, page, size)
  local where, args = {}, {}
  if owner_id then args[#args + 1] = owner_id; where[#where + 1] = "user_id = $" .. #args end
  if event_id then args[#args + 1] = event_id; where[#where + 1] = "event_id = $" .. #args end
  local from = "bookings" .. (#where > 0 and " WHERE " .. table.concat(where, " AND ") or "")
  -- a user's own list reads the total migration 0016's triggers keep
  local count = owner_id and not event_id
    and "SELECT coalesce((SELECT bookings FROM user_booking_totals WHERE user_id = $1), 0)" or nil
  return pages.fetch(COLUMNS, from, args, "id DESC", page, size, count)
end

return M
