--- shared_gate: the shared (Redis) level of the sold-out gate (core/gate.h
-- has the whole design). A worker whose batch found an event with no seats
-- left closes the event's shared gate: a mark in Redis. Any worker of any
-- instance that has not seen the event selling reads the mark before going
-- to Postgres and answers "sold out" from it (domain/seats.lua).
--
-- The mark only ever refuses; Postgres decides every sale. It can never
-- outlive seats coming back for long:
-- - every give-back (cancellation, offer expiry or withdrawal, capacity
--   change) calls open() after its commit, which replaces the mark by an
--   "open" stamp (wall-clock ms);
-- - a mark is written by a script that refuses it when an "open" stamp newer
--   than the start of the batch that saw the event sold out is there, so a
--   slow batch cannot close the gate again on seats given back meanwhile;
-- - marks and stamps expire after TTL seconds, the safety net for an open()
--   that did not reach Redis (Redis down for that one call).
-- Redis down: read() answers "not marked" and Postgres answers as before.
-- A mark is signed (crypto.sign) over its event, max_per_booking and the
-- time it was written: a mark written by anyone but evently, moved to
-- another event or replayed after TTL, is no mark (issue 15: whoever can
-- write Redis cannot stop an event's sales).
local crypto = require "evently.crypto"
local time = require "evently.time"
local log = require "evently.log"

local M = {}

local TTL_MS = 5000
local PREFIX = "evently:gate:"

-- KEYS[1] the event's key; ARGV: batch start (ms), max_per_booking, ttl (ms).
local CLOSE = [[
local cur = redis.call('GET', KEYS[1])
local opened = cur and string.match(cur, '^open:(%d+)$')
if opened and tonumber(opened) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], 'closed:' .. ARGV[2], 'PX', ARGV[3])
return 1]]

local registered = false
local function client()
  local ok, redis = pcall(require, "evently.redis")
  if not ok then return nil end
  if not registered then
    redis.register_script("evently_shared_gate_close", CLOSE)
    registered = true
  end
  return redis
end

--- Now in wall-clock milliseconds: the stamp a batch takes before it starts.
function M.clock() return math.floor(time.now() * 1000) end

-- What a mark's MAC covers.
local function signed(event_id, max_per_booking, at_ms)
  return ("closed:%d:%d:%d"):format(event_id, max_per_booking, at_ms)
end

--- Closes event_id's shared gate, as seen by a batch that started at
-- started_ms; max_per_booking is kept with it (a larger quantity is a 422,
-- answered by the full path). Never raises; a failure only costs later round
-- trips.
function M.close(event_id, started_ms, max_per_booking)
  local redis = client()
  if not redis then return end
  local at = M.clock()
  local mac = crypto.sign(signed(event_id, max_per_booking, at))
  if not mac then return end
  local ok, err = redis.eval("evently_shared_gate_close", { PREFIX .. event_id },
    { started_ms, ("%d:%d:%s"):format(max_per_booking, at, mac), TTL_MS })
  if ok == nil then log.debug("shared gate of event %d not closed: %s", event_id, tostring(err)) end
end

--- max_per_booking while event_id's shared gate is closed, else nil (also when
-- Redis cannot answer). Yields for one Redis round trip.
function M.read(event_id)
  local redis = client()
  if not redis then return nil end
  local v = redis.call("GET", PREFIX .. event_id)
  if type(v) ~= "string" then return nil end
  local max, at, mac = v:match("^closed:(%d+):(%d+):(%x+)$")
  max, at = math.tointeger(tonumber(max)), math.tointeger(tonumber(at))
  -- another instance's clock may run a little ahead or behind: a second
  if not (max and at and math.abs(M.clock() - at) <= TTL_MS + 1000) then return nil end
  return crypto.verify(signed(event_id, max, at), mac) and max or nil
end

--- Seats of event_id came back (called after the commit): no worker may
-- learn "sold out" from Redis any more until Postgres says so again.
function M.open(event_id)
  local redis = client()
  if not redis then return end
  local ok, err = redis.call("SET", PREFIX .. event_id, "open:" .. M.clock(), "PX", TTL_MS)
  -- the mark's expiry bounds what this failure leaves behind
  if not ok then log.debug("shared gate of event %d not opened: %s", event_id, tostring(err)) end
end

return M
