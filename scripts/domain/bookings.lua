--- bookings: seats taken and given back atomically, each in one statement.
-- take: one conditional UPDATE of the event row (available >= quantity and the
-- event on sale) feeding the booking INSERT and the outbox row, in a single
-- round trip: never read-then-write. cancel: flips the booking only if it is
-- still confirmed and gives exactly its seats back in the same statement, so
-- concurrent cancels restore seats once.
local db = require "evently.db"
local rules = require "rules.booking"

local M = {}

local COLUMNS = "id, event_id, user_id, quantity, status, total_cents, currency, created_at, cancelled_at"
M.COLUMNS = COLUMNS

local TAKE = [[
WITH ev AS (
  UPDATE events SET available = available - $2, updated_at = now()
  WHERE id = $1 AND available >= $2 AND status = 'published'
    AND $2 <= max_per_booking
    AND (sales_start IS NULL OR sales_start <= now())
    AND (sales_end IS NULL OR sales_end > now())
    AND ($4 OR starts_at > now())
  RETURNING id, price_cents, currency, available),
b AS (
  INSERT INTO bookings (event_id, user_id, quantity, status, total_cents, currency)
  SELECT ev.id, $3, $2, 'confirmed', ev.price_cents * $2, ev.currency FROM ev
  RETURNING ]] .. COLUMNS .. [[),
o AS (
  INSERT INTO outbox (event_type, aggregate_id, payload)
  SELECT 'booking.confirmed', b.event_id,
         jsonb_build_object('booking_id', b.id, 'event_id', b.event_id, 'user_id', b.user_id,
                            'quantity', b.quantity, 'available', ev.available)
  FROM b, ev)
SELECT b.*, ev.available AS event_available FROM b, ev]]

--- Takes quantity seats of event_id for user_id. Returns booking, or nil and
-- a reason: "not-found" | "not-on-sale" | "too-many" | "sold-out" (with the
-- event's available) | a db error.
function M.create(event_id, user_id, quantity)
  local row, err = db.one(TAKE, event_id, quantity, user_id, rules.allow_after_start)
  if err then return nil, err end
  if row then
    row.event_available = nil
    return row
  end
  -- refused: say why (this read is not part of the decision, only of the answer)
  local ev, eerr = db.one([[SELECT status, available, max_per_booking,
      (sales_start IS NULL OR sales_start <= now()) AND (sales_end IS NULL OR sales_end > now())
        AND ($2 OR starts_at > now()) AS on_sale
    FROM events WHERE id = $1]], event_id, rules.allow_after_start)
  if eerr then return nil, eerr end
  if not ev then return nil, "not-found" end
  if ev.status ~= "published" or not ev.on_sale then return nil, "not-on-sale", ev end
  if quantity > ev.max_per_booking then return nil, "too-many", ev end
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

--- Cancels a confirmed booking (owner_id nil: any owner, for admins). Returns
-- the booking as it now is; a second cancel returns it unchanged and gives
-- nothing back. nil when there is no such booking (for this owner).
function M.cancel(id, owner_id)
  local row, err = db.one(CANCEL, id, owner_id)
  if err then return nil, err end
  if row then return row, nil, true end
  return M.get(id, owner_id)
end

function M.get(id, owner_id)
  return db.one("SELECT " .. COLUMNS .. " FROM bookings WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)",
    id, owner_id)
end

--- Lists bookings, newest first: one user's, or (owner_id nil) an event's or all.
function M.list(owner_id, event_id, page, size)
  local rows, err = db.query("SELECT " .. COLUMNS .. [[, count(*) OVER () AS total FROM bookings
      WHERE ($1::bigint IS NULL OR user_id = $1) AND ($2::bigint IS NULL OR event_id = $2)
      ORDER BY id DESC LIMIT $3 OFFSET $4]], owner_id, event_id, size, (page - 1) * size)
  if not rows then return nil, err end
  local total = rows[1] and rows[1].total or 0
  for _, r in ipairs(rows) do r.total = nil end
  return rows, total
end

return M
