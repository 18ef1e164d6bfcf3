--- waitlist: ordered entries; freed seats are offered (held) to the oldest
-- waiting entry whose quantity fits, inside the transaction that freed them,
-- under the event row's lock, so a seat is never offered twice and never
-- sold to someone else first. An offer is a hold of the seats pool
-- (evently.inventory): converting it confirms the hold, leaving releases it,
-- and the pool's sweeper expires it (any worker, any instance, once).
local db = require "evently.db"
local seats = require("domain.seats").pool
local notify = require "domain.notify"
local rules = require "rules.waitlist"
local limit = require "domain.ticket_limit"
local pages = require "domain.pages"

local M = {}

local COLUMNS = "id, event_id, user_id, quantity, status, offer_expires_at, created_at"

local function must(v, err)
  if v == nil and err then error(err, 0) end
  return v
end

--- Offers the event's available seats to waiting entries, oldest first.
-- Runs inside tx; returns the entries offered.
function M.offer(tx, event_id)
  local ev = must(tx.one("SELECT available, status, max_per_booking FROM events WHERE id = $1 FOR UPDATE", event_id))
  local offered = {}
  if not ev or ev.status ~= "published" then return offered end
  local left = ev.available
  while left > 0 do
    -- an entry above max_per_booking (lowered after it joined) cannot be
    -- offered seats; it is passed over, never blocking the entries behind it
    -- The event as a range ($1..$1) and the order as (event_id, id): only
    -- waitlist_event_waiting_idx gives that order, so every plan of this
    -- prepared statement, the generic one too, reads just this event's
    -- waiting entries. With "event_id = $1 ... ORDER BY id" the generic plan
    -- walked the primary key from the oldest entry of any event (the soak:
    -- 25,000 index tuples, 15 ms, on every cancellation of an event with no
    -- waitlist at all). An equality would let the planner drop event_id from
    -- the order and pick the primary key again.
    local e = must(tx.one([[SELECT id, user_id, quantity FROM waitlist
        WHERE event_id >= $1 AND event_id <= $1 AND status = 'waiting' AND quantity <= $2 AND quantity <= $3
        ORDER BY event_id, id LIMIT 1 FOR UPDATE SKIP LOCKED]], event_id, left, ev.max_per_booking))
    if not e then break end
    -- nil: the event is not selling now (outside its sales window)
    local hold = must(seats:hold(tx, event_id, e.user_id, e.quantity, rules.offer_minutes * 60))
    if not hold then break end
    local row = must(tx.one([[UPDATE waitlist SET status = 'offered', updated_at = now(),
        hold_id = $2, offer_expires_at = $3 WHERE id = $1 RETURNING ]] .. COLUMNS,
      e.id, hold.id, hold.expires_at))
    notify.emit(tx, "waitlist.offered", event_id, { waitlist_entry_id = e.id, event_id = event_id,
      user_id = e.user_id, quantity = e.quantity, offer_expires_at = row.offer_expires_at }, e.user_id)
    offered[#offered + 1] = row
    left = left - e.quantity
  end
  return offered
end

local function position(tx_or_db, entry)
  if entry.status ~= "waiting" then return nil end
  return tx_or_db.value("SELECT count(*) FROM waitlist WHERE event_id = $1 AND status = 'waiting' AND id <= $2",
    entry.event_id, entry.id)
end

--- Joins the waitlist: only when the event cannot serve quantity now, and
-- not for more than the user may still hold (rules/booking.lua max_per_user;
-- a hint only: the conversion is where the limit is exact).
-- Returns entry | nil, "not-found" | "not-on-sale" | "too-many" | "limit-exceeded"
-- (with max_per_user, held) | "tickets-available" | err.
function M.join(event_id, user_id, quantity)
  return db.transaction(function(tx)
    local ev = must(tx.one("SELECT status, available, max_per_booking FROM events WHERE id = $1 FOR SHARE", event_id))
    if not ev then return nil, "not-found" end
    if ev.status ~= "published" then return nil, "not-on-sale" end
    if quantity > ev.max_per_booking then return nil, "too-many", ev end
    if limit.max then
      local held = must(tx.value(limit.HELD, event_id, user_id))
      if held + quantity > limit.max then return nil, "limit-exceeded", limit.refusal(held) end
    end
    if ev.available >= quantity then return nil, "tickets-available", ev end
    local entry = must(tx.one(
      "INSERT INTO waitlist (event_id, user_id, quantity) VALUES ($1, $2, $3) RETURNING " .. COLUMNS,
      event_id, user_id, quantity))
    entry.position = position(tx, entry)
    return entry
  end)
end

--- A page of user_id's entries, newest first, each with its position (null
-- unless waiting): one statement, whatever the page holds. Returns rows,
-- total | nil, err.
function M.list(user_id, page, size)
  local rows, total = pages.fetch(COLUMNS .. [[, CASE WHEN w.status = 'waiting' THEN (SELECT count(*) FROM waitlist x
      WHERE x.event_id = w.event_id AND x.status = 'waiting' AND x.id <= w.id) END AS position]],
    "waitlist w WHERE user_id = $1", { user_id }, "id DESC", page, size)
  if not rows then return nil, total end
  for _, r in ipairs(rows) do
    if r.position == nil then r.position = db.null end
  end
  return rows, total
end

--- Leaves the waitlist; an offered entry gives its held seats back (and they
-- are offered on). Returns true, event_id | false (no such entry of theirs) |
-- nil, err (the transaction failed).
function M.leave(id, user_id)
  return db.transaction(function(tx)
    local e = must(tx.one(
      "SELECT id, event_id, quantity, status, hold_id FROM waitlist WHERE id = $1 AND user_id = $2 FOR UPDATE",
      id, user_id))
    if not e then return false end
    if e.status == "waiting" or e.status == "offered" then
      must(tx.query(
        "UPDATE waitlist SET status = 'cancelled', offer_expires_at = NULL, updated_at = now() WHERE id = $1", id))
      if e.status == "offered" then
        must(seats:release(tx, e.hold_id)) -- nil when the sweeper got there first: nothing to give back
        M.offer(tx, e.event_id)
      end
    end
    return true, e.event_id
  end, { retries = 3 })
end

--- Expires overdue offers: the seats pool's sweeper gives each expired
-- hold's seats back exactly once (any worker, any instance: SKIP LOCKED),
-- and in the same transaction its entry becomes "expired", its owner is told
-- and the seats are offered on. Returns the event ids it touched (empty when
-- nothing was due).
function M.expire_due(max)
  return db.transaction(function(tx)
    local holds = must(seats:sweep(tx, max or 100))
    local touched, order = {}, {}
    for _, h in ipairs(holds) do
      local e = must(tx.one([[UPDATE waitlist SET status = 'expired', updated_at = now()
          WHERE hold_id = $1 AND status = 'offered' RETURNING id, event_id, user_id, quantity]], h.id))
      if e then
        notify.emit(tx, "waitlist.expired", e.event_id, { waitlist_entry_id = e.id, event_id = e.event_id,
          user_id = e.user_id, quantity = e.quantity }, e.user_id)
      end
      if not touched[h.key] then touched[h.key], order[#order + 1] = true, h.key end
    end
    for _, event_id in ipairs(order) do M.offer(tx, event_id) end
    return order
  end, { retries = 3 })
end

return M
