--- evently.inventory: atomic reservation primitives over Postgres rows.
-- The engine is C (core/inventory.c); this module gives it a pool object.
--
--   local pool = inventory.pool{
--     name = "seats", table = "events", key = "id",
--     available = "available", capacity = "capacity",
--     open = "status = 'published'",      -- SQL over the row: may it be taken from now?
--     max_claim = "max_per_booking",      -- SQL bound on one claim (optional)
--     columns = "price_cents, currency",  -- row columns the record reads as g.<col>
--     record = "INSERT INTO bookings (...) SELECT g.id, $1, g.owner, g.quantity, ... FROM granted g RETURNING id, ...",
--                                         -- granted(seq, owner, quantity, tag, id, <columns>)
--     record_seq = "bookings_id_seq",     -- numbers granted.id
--     after = "INSERT INTO outbox ... SELECT ... FROM recorded r",   -- optional; or a list (up to 4)
--     owner_held = "SELECT user_id AS owner, sum(quantity)::int AS held FROM ... $1 ... $3::bigint[] ...",
--     touch = "updated_at",               -- set to now() by every change (optional)
--     on_empty = function(key, started_ms, max) end,   -- a batch left nothing (optional)
--   }
--
--   pool:take(key, owner, quantity, {limit =, queue_seconds =, tag =})
--       coalesced with this worker's concurrent takes of the same row (one
--       statement per batch). -> record_row | nil, why, info | nil, err
--       why: "sold-out" (info.left), "too-many" (info.max), "limit-exceeded"
--       (info.held), "closed" (no such row, or not open), "busy" (not taken:
--       withdrawn before its batch), "unknown" (its batch never answered)
--       tag: the caller's label for the claim (granted.tag in the statement)
--   pool:take_in(tx, key, owner, quantity, limit, tag)   the same statement for one
--       claim, inside the caller's transaction (its other rows commit with it)
--   pool:hold(q, key, owner, quantity, seconds) -> hold | nil (did not fit) | nil, err
--   pool:confirm(q, hold_id, owner?) -> hold | nil (not held, expired or not theirs)
--   pool:release(q, hold_id, owner?) -> {id, key, owner, quantity, available} | nil
--   pool:give_back(q, key, quantity) -> available | nil (would pass capacity)
--   pool:resize(q, key, capacity) -> {capacity, available} | nil (below what is taken)
--   pool:available(key, q?) -> {available, capacity} | nil
--   pool:sweep(q, max?) -> holds expired now (their units given back), each once
--   pool:gate_closed(key, quantity) -> true when the gate refuses (no round trip)
--   pool:reopen(key)   units came back: this worker's gate opens now
--
-- q is evently.db or a transaction (db.transaction's tx). Holds live in
-- table inventory_holds (migration 0010): held -> confirmed | released | expired.
local core = require "evently.inventory.core"
local time = require "evently.time"

local M = { core = core }

local Pool = {}
Pool.__index = Pool

local function array(t) return "{" .. table.concat(t, ",") .. "}" end

function M.pool(def)
  assert(type(def) == "table" and type(def.name) == "string", "inventory.pool: name required")
  core.define(def)
  local p = setmetatable({ name = def.name, on_empty = def.on_empty, limited = def.owner_held ~= nil,
    sql = {} }, Pool)
  for _, op in ipairs { "batch", "batch_limited", "lock", "hold", "confirm", "release", "give_back",
                        "resize", "available", "sweep" } do
    p.sql[op] = core.sql(def.name, op)
  end
  return p
end

local function refusal(why, info, max)
  if why == "sold-out" then return { left = info, max = max } end
  if why == "too-many" then return { max = info } end
  if why == "limit-exceeded" then return { held = info, max = max } end
  return { max = max }
end

function Pool:gate_closed(key, quantity)
  return core.closed(self.name, key, quantity)
end

function Pool:reopen(key) core.reopen(self.name, key) end

-- The gate is not asked here: the engine refuses a gated claim when its batch
-- starts, without a round trip (callers with a cheaper early answer ask
-- pool:gate_closed first; see core/gate.h).
function Pool:take(key, owner, quantity, opts)
  local limit = opts and opts.limit or 0
  if limit > 0 and not self.limited then error("inventory: pool " .. self.name .. " has no owner_held", 2) end
  local ok, a, info, emptied, started, max = core.take(self.name, key, owner, quantity, limit,
    opts and opts.queue_seconds or 25, opts and opts.tag)
  if ok == nil then return nil, a end
  if emptied and self.on_empty then time.after(0, self.on_empty, key, started, max) end
  if ok then return a end
  return nil, a, refusal(a, info, max)
end

-- One claim through the batch statement, so a take in a transaction obeys
-- exactly the rules of a coalesced one.
-- a text[] literal of one tag (NULL when none)
local function tags(tag)
  if tag == nil then return "{NULL}" end
  return '{"' .. tostring(tag):gsub('[\\"]', "\\%0") .. '"}'
end

function Pool:take_in(tx, key, owner, quantity, limit, tag)
  local rows, err
  if limit and limit > 0 then
    rows, err = tx.query(self.sql.lock, key)
    if not rows then return nil, err end
    rows, err = tx.query(self.sql.batch_limited, key, "{1}", array { owner }, array { quantity }, tags(tag), limit)
  else
    rows, err = tx.query(self.sql.batch, key, "{1}", array { owner }, array { quantity }, tags(tag))
  end
  if not rows then return nil, err end
  local r = rows[1]
  if not r then return nil, "closed", { max = nil } end
  local why = core.classify(r.inv_took, quantity, r.inv_max, r.inv_over)
  local INFO = { ["too-many"] = "inv_max", ["limit-exceeded"] = "inv_held", ["sold-out"] = "inv_left" }
  local info, max = r[INFO[why] or "inv_left"], r.inv_max
  for k in pairs(r) do if k:sub(1, 4) == "inv_" then r[k] = nil end end
  -- no gate or on_empty here: the caller's transaction may still roll back
  if why == "granted" then return r end
  return nil, why, refusal(why, info, max)
end

function Pool:hold(q, key, owner, quantity, seconds)
  return q.one(self.sql.hold, key, owner, quantity, seconds)
end

function Pool:confirm(q, hold_id, owner)
  return q.one(self.sql.confirm, hold_id, owner)
end

function Pool:release(q, hold_id, owner)
  return q.one(self.sql.release, hold_id, owner)
end

function Pool:give_back(q, key, quantity)
  return q.value(self.sql.give_back, key, quantity)
end

function Pool:resize(q, key, capacity)
  return q.one(self.sql.resize, key, capacity)
end

function Pool:available(key, q)
  return (q or require("evently.db")).one(self.sql.available, key)
end

function Pool:sweep(q, max)
  return q.query(self.sql.sweep, max or 200)
end

return M
