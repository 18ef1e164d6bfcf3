--- evently.limit: rate limits shared by every worker and instance.
--   rule = {name = "login-address", limit = 30, window = 60}
--       at most `limit` units at once, given back evenly over `window` seconds
--       (a token bucket of `limit` tokens refilled at limit/window per second).
--       EVENTLY_LIMIT_<NAME> (name upper-cased, "-" -> "_") overrides it:
--       "100/60" (limit/window) or "off". A malformed rule raises.
--   ok, info = limit.check(rule, key, opts?)                        [yields]
--       takes one unit of rule's quota for key (any string: an address, an
--       email); ok is false when none is left. Never fails: when Redis cannot
--       answer, this worker's own table counts instead (info.fallback).
--       info = {policy, limit, window, remaining, retry_after, reset,
--       fallback}; retry_after/reset in seconds until one unit is back / the
--       whole quota is. opts.redis: a client (redis.connect) instead of the
--       worker's connection.
--   limit.refund(rule, key, opts?)                                  [yields]
--       gives back the unit a check took (a login that turned out right).
--   status, body, headers = limit.response(info, detail?)
--       the 429 answer: problem `rate-limited`, Retry-After, RateLimit-Policy
--       and RateLimit (draft-ietf-httpapi-ratelimit-headers).
--   limit.address(peer) -> string   the client's key: an IPv4 address as is, an
--       IPv6 address cut to its /64 (one subscriber holds a whole /64).
--   limit.answer_early{method=, path=, route=, rule=}
--       while a check of rule refuses an address, this worker answers that
--       address's method+path requests 429 from C, before any Lua runs
--       (core/early.h "refuse when limited"). The route must check rule with
--       limit.address(req.peer) first thing, so C answers only what it would.
--       Call it while the app loads (as the routes register).
--   limit.key(rule, key) -> string  the Redis key (operators DEL it to unblock)
-- Runs in a request, timer or script coroutine.
--
-- The bucket is kept as GCRA does: one number per key, the time at which the
-- bucket will be full again ("tat"). A check moves it one interval
-- (window/limit) later unless that lands more than a window ahead. Keys are
-- evently:rl:<rule>:<sha256(key)>, so no address or email sits in Redis, and
-- each expires when its bucket is full again (at most `window` seconds): an
-- attacker cycling random keys grows Redis by at most the keys of one window.
-- The fallback table is per worker and bounded (MAX_LOCAL keys, oldest out),
-- so during an outage a client gets up to workers x instances x limit.
-- A key Redis refused is answered from this worker's memory until its retry
-- time (bounded the same way): the refusal cannot end sooner, and a client
-- hammering a limit it hit costs no round trip. A refund forgets it.
local redis = require "evently.redis"
local crypto = require "evently.crypto"
local time = require "evently.time"
local log = require "evently.log"
local runtime = require "evently.runtime"
local problem = require "evently.problem"
local early = require "evently.early"

local M = {}

local PREFIX = "evently:rl:"
local MAX_LOCAL = 10000
local REDIS_TIMEOUT = 0.25 -- a slow Redis must not slow every login: count locally

-- KEYS[1] the bucket; ARGV interval_ms, span_ms (= limit * interval), cost
-- (1 takes, -1 gives back). Returns {allowed, remaining, retry_ms, reset_ms}.
-- Same arithmetic as gcra() below; Redis' clock serves every instance.
local SCRIPT = redis.register_script("evently_limit", [[
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval, span, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call("GET", KEYS[1])) or now, now)
if cost < 0 then
  tat = math.max(tat - interval, now)
  if tat > now then redis.call("SET", KEYS[1], string.format("%d", tat), "PX", tat - now)
  else redis.call("DEL", KEYS[1]) end
  return {1, 0, 0, tat - now}
end
local new = tat + interval
if new - span > now then return {0, 0, new - span - now, tat - now} end
redis.call("SET", KEYS[1], string.format("%d", new), "PX", new - now)
return {1, math.floor((now - (new - span)) / interval), 0, new - now}
]])

---------------------------------------------------------------- rules

local effective = setmetatable({}, { __mode = "k" }) -- rule table -> rule after env

local function resolve(rule)
  local r = effective[rule]
  if r then return r end
  if type(rule) ~= "table" or type(rule.name) ~= "string" or not rule.name:match("^[%w_%-]+$")
    or math.type(rule.limit) ~= "integer" or rule.limit < 1
    or type(rule.window) ~= "number" or rule.window <= 0 then
    error("limit: a rule is {name = [%w_-]+, limit = integer >= 1, window = seconds > 0}", 3)
  end
  local var = "EVENTLY_LIMIT_" .. rule.name:upper():gsub("%-", "_")
  local env = os.getenv(var)
  r = { name = rule.name, limit = rule.limit, window = rule.window }
  if env == "off" then
    r.off = true
  elseif env then
    local n, w = env:match("^(%d+)/(%d+)$")
    n, w = tonumber(n), tonumber(w)
    if not n or n < 1 or w < 1 then error(var .. ' must be "limit/seconds" or "off", not ' .. env, 3) end
    r.limit, r.window = n, w
  end
  -- whole milliseconds keep Redis' doubles exact; span makes the burst exactly limit
  r.interval = math.max(1, math.floor(r.window * 1000 / r.limit))
  r.span = r.interval * r.limit
  effective[rule] = r
  return r
end

local function bucket(r, key)
  return PREFIX .. r.name .. ":" .. crypto.sha256(key):sub(1, 32)
end

function M.key(rule, key) return bucket(resolve(rule), key) end

---------------------------------------------------------------- the fallback

-- A table of at most MAX_LOCAL keys: the oldest key goes to make room.
-- Returns the table and its setter.
local function bounded()
  local t, order, first, last = {}, {}, 1, 0
  return t, function(k, v)
    if t[k] == nil then
      if last - first + 1 >= MAX_LOCAL then
        t[order[first]], order[first] = nil, nil
        first = first + 1
      end
      last = last + 1
      order[last] = k
    end
    t[k] = v
  end
end

-- key -> tat (ms, monotonic). A key whose tat has passed is a full bucket, so
-- entries are never deleted, only pushed out.
local tats, remember = bounded()

-- The bucket step, as SCRIPT does it. Returns the new tat (nil: unchanged)
-- and allowed, remaining, retry_ms, reset_ms.
local function gcra(tat, now, r, cost)
  tat = math.max(tat or now, now)
  if cost < 0 then
    tat = math.max(tat - r.interval, now)
    return tat, 1, 0, 0, tat - now
  end
  local new = tat + r.interval
  if new - r.span > now then return nil, 0, 0, new - r.span - now, tat - now end
  return new, 1, (now - (new - r.span)) // r.interval, 0, new - now
end

local function local_step(k, r, cost)
  local now = math.floor(time.monotonic() * 1000)
  local new, allowed, remaining, retry, reset = gcra(tats[k], now, r, cost)
  if new then remember(k, new) end
  return { allowed, remaining, retry, reset }
end

local degraded = false -- logged once per outage, not once per request

-- A refused key stays refused until its retry time: this worker answers it
-- from memory until then, so a client hammering a limit it has hit costs no
-- Redis round trip (bucket -> {until_ms, reset_ms}; bounded, oldest out).
local refused, set_refused = bounded()

local function refuse_until(k, retry_ms, reset_ms)
  local now = math.floor(time.monotonic() * 1000)
  set_refused(k, { now + retry_ms, now + reset_ms })
end

local function still_refused(k)
  local e = refused[k]
  if not e then return nil end
  local now = math.floor(time.monotonic() * 1000)
  if now >= e[1] then return nil end
  return { 0, 0, e[1] - now, e[2] - now }
end

-- Rules with an early answer hear of every refusal and refund of an address.
local function tell_early(r, key, res)
  if not r.early then return end
  if res then
    if res[1] ~= 1 and res[3] > 0 then early.refused(r.name, key, res[3] / 1000) end
  else
    early.unrefused(r.name, key)
  end
end

local function step(r, key, cost, opts)
  if r.off then return { 1, r.limit, 0, 0 } end
  local k = bucket(r, key)
  if cost < 0 then
    if refused[k] then set_refused(k, false) end -- a refund: ask Redis again next time
    tell_early(r, key, nil)
  else
    local known = refused[k] and still_refused(k)
    if known then
      tell_early(r, key, known)
      return known
    end
  end
  local args, o = { r.interval, r.span, cost }, { timeout = REDIS_TIMEOUT }
  local reply, err
  if opts and opts.redis then
    reply, err = opts.redis:eval(SCRIPT, { k }, args, o)
  else
    reply, err = redis.eval(SCRIPT, { k }, args, o)
  end
  if type(reply) == "table" then
    if degraded then log.info("limit: Redis answers again; limits are shared again") end
    degraded = false
    if reply[1] ~= 1 and reply[3] > 0 then
      refuse_until(k, reply[3], reply[4])
      tell_early(r, key, reply)
    end
    return reply
  end
  if not degraded then log.warn("limit: Redis cannot count (%s); each worker counts alone", tostring(err)) end
  degraded = true
  local res = local_step(k, r, cost)
  res.fallback = true
  tell_early(r, key, res)
  return res
end

---------------------------------------------------------------- API

local function seconds(ms) return math.max(0, math.ceil(ms / 1000)) end

function M.check(rule, key, opts)
  if type(key) ~= "string" then error("limit.check: key must be a string", 2) end
  local r = resolve(rule)
  local res = step(r, key, 1, opts)
  local info = {
    policy = r.name, limit = r.limit, window = r.window, remaining = res[2],
    retry_after = seconds(res[3]), reset = seconds(res[4]), fallback = res.fallback or false,
  }
  if res[1] ~= 1 then
    info.retry_after = math.max(1, info.retry_after)
    runtime.count("evently_rate_limited_total")
    return false, info
  end
  return true, info
end

function M.refund(rule, key, opts)
  if type(key) ~= "string" then error("limit.refund: key must be a string", 2) end
  step(resolve(rule), key, -1, opts)
end

function M.answer_early(spec)
  if type(spec) ~= "table" then error("limit.answer_early: a table is required", 2) end
  local r = resolve(spec.rule)
  if r.off then return end
  early.refuse_when_limited{ method = spec.method, path = spec.path, route = spec.route,
    policy = r.name, limit = r.limit, window = math.ceil(r.window) }
  r.early = true
end

-- M.response() and core/early.c's limited_answer() write the same answer.
function M.response(info, detail)
  local status, body, headers = problem.response(429, "rate-limited",
    detail or "too many requests; retry after " .. info.retry_after .. " s",
    { ["violated-policies"] = { info.policy }, retry_after = info.retry_after })
  headers["Retry-After"] = tostring(info.retry_after)
  headers["RateLimit-Policy"] = string.format('"%s";q=%d;w=%d', info.policy, info.limit, math.ceil(info.window))
  headers["RateLimit"] = string.format('"%s";r=0;t=%d', info.policy, info.retry_after)
  return status, body, headers
end

-- The first four groups of an IPv6 address, "::" expanded.
local function ipv6_prefix(addr)
  local head, tail = addr:match("^(.-)::(.*)$")
  local groups = {}
  for g in (head or addr):gmatch("[^:]+") do groups[#groups + 1] = g end
  if head then
    local rest = {}
    for g in tail:gmatch("[^:]+") do rest[#rest + 1] = g end
    for _ = 1, 8 - #groups - #rest do groups[#groups + 1] = "0" end
    for _, g in ipairs(rest) do groups[#groups + 1] = g end
  end
  for i = 1, 4 do groups[i] = string.format("%x", tonumber(groups[i] or "0", 16) or 0) end
  return table.concat(groups, ":", 1, 4) .. "::/64"
end

function M.address(peer)
  peer = tostring(peer or "")
  local v4 = peer:match("^::ffff:(%d+%.%d+%.%d+%.%d+)$")
  if v4 then return v4 end
  if peer:find(":", 1, true) then return ipv6_prefix(peer) end
  return peer
end

return M
