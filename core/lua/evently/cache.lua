--- evently.cache: cache-aside with a per-worker L1 and Redis as L2.
--   v, err = cache.fetch(key, ttl, loader, opts)
--       L1 (this worker, LRU with TTL) -> L2 (Redis) -> loader(); the loader's
--       value is stored in both with ttl seconds. One loader call at a time per
--       key per worker: concurrent fetches of a missing key wait for the first
--       (no stampede). A loader returning nil, err is passed through, not cached.
--       Values must be JSON-encodable (they travel through Redis).
--       opts.family = "prefix:"   the key belongs to a family that
--                                 cache.invalidate(prefix, true) drops at once
--       Bounded by design: what a client can name freely (a list query, an
--       id or token that does not exist) must not grow Redis. A loader's
--       `false` (not found) and every key of a family are kept in L1 only
--       (at most MAX_ITEMS per worker, least recently used evicted).
--   cache.invalidate(key)              drop one key everywhere
--   cache.invalidate(family, true)     drop every key fetched with that family
--       L1 of every worker of every instance hears it through Redis pub/sub
--       (and Postgres NOTIFY when Redis is down), L2 is deleted at once.
--       A family is dropped by bumping its generation (O(1), whatever the
--       cache holds); nothing ever scans Redis's keyspace.
--   cache.stats() -> {hits_l1, hits_l2, misses, loads, invalidations, size,
--                     rejected (L2 entries not signed by this deployment, or expired)}
--       L2 entries are signed (crypto.sign): a value written into Redis by
--       anyone but evently is a miss, never believed.
--   cache.on_invalidate(fn)            fn(key, is_prefix) for every invalidation this
--                                      worker hears (its own and other workers')
-- Redis is optional: when it is down, fetch goes L1 -> loader and invalidate
-- uses Postgres NOTIFY, so a change is still seen everywhere at once.
local crypto = require "evently.crypto"
local json = require "evently.json"
local sync = require "evently.sync"
local time = require "evently.time"
local log = require "evently.log"

local M = {}
local PREFIX = "evently:cache:"
local CHANNEL = "evently_cache_invalidate"
local MAX_ITEMS = 2000
-- Seconds a fetch waits for another coroutine's loader: well inside a
-- request's deadline, so a waiter outlives a leader that never finishes.
local WAIT = math.min(10, (require("evently.runtime").config().handler_timeout or 30) / 3)

local stats = { hits_l1 = 0, hits_l2 = 0, misses = 0, loads = 0, invalidations = 0, size = 0, rejected = 0 }

-- L1: a hash for lookup plus a doubly linked list for recency (head = newest).
local items, head, tail = {}, nil, nil
-- A family's generation in this worker; entries of an older one are misses.
local generations = {}

local function unlink(e)
  if e.prev then e.prev.next = e.next else head = e.next end
  if e.next then e.next.prev = e.prev else tail = e.prev end
  e.prev, e.next = nil, nil
end

local function push_front(e)
  e.next = head
  if head then head.prev = e end
  head = e
  if not tail then tail = e end
end

local function l1_drop(key)
  local e = items[key]
  if e then
    unlink(e)
    items[key] = nil
    stats.size = stats.size - 1
  end
end

local function l1_get(key)
  local e = items[key]
  if not e then return nil end
  if e.expires <= time.monotonic() or (e.family and e.gen ~= (generations[e.family] or 0)) then
    l1_drop(key)
    return nil
  end
  unlink(e); push_front(e)
  return e
end

local function l1_set(key, value, ttl, family)
  l1_drop(key)
  local e = { key = key, value = value, expires = time.monotonic() + ttl,
    family = family, gen = family and (generations[family] or 0) }
  items[key] = e
  push_front(e)
  stats.size = stats.size + 1
  if stats.size > MAX_ITEMS then l1_drop(tail.key) end
end

-- Invalidations bump the epoch; a load that started before the latest one
-- does not store what it read, since it may be the value just invalidated.
local epoch = 0

local listeners = {}

function M.on_invalidate(fn)
  listeners[#listeners + 1] = fn
end

local function apply(msg)
  local kind, key = msg:match("^([kp]):(.*)$")
  if not kind then return end
  epoch = epoch + 1
  for i = 1, #listeners do listeners[i](key, kind == "p") end
  if kind == "k" then
    l1_drop(key)
  else
    generations[key] = (generations[key] or 0) + 1
  end
end

-- Subscriptions start on first use, in whichever coroutine gets here first.
local subscribed = false
local function subscribe()
  if subscribed then return end
  subscribed = true
  local ok_r, redis = pcall(require, "evently.redis")
  if ok_r then
    redis.subscribe(CHANNEL, function(_, msg) apply(msg) end)
  end
  require("evently.db").listen(CHANNEL, function(msg) apply(msg) end)
end

local function redis_or_nil()
  local ok, redis = pcall(require, "evently.redis")
  return ok and redis or nil
end

-- An L2 entry is "<hmac><json>": the HMAC (crypto.sign, the instance
-- secret) covers the key and the JSON, which holds the value, when it was
-- written and its expiry (wall-clock ms). Whoever can write Redis cannot
-- forge an entry (a token resolving to an admin), move one to another key, or
-- replay an old one past its expiry; such an entry is a miss, counted in
-- stats.rejected.
--
-- Invalidating a key leaves a stamp (INV .. key, the time, for STAMP_MS)
-- beside deleting it. A load that began less than SKEW_MS before the latest
-- stamp may have read the value just invalidated, so its write to Redis is
-- refused (a script checks the stamp and writes atomically): without it, a
-- token revoked on one worker while another was loading it came back,
-- validly signed, for every worker for 30 s. An entry written before the
-- stamp is a miss too, so a captured entry replayed after an invalidation is
-- refused as well.
local MAC = 64
local INV = "evently:cache:inv:"
local STAMP_MS = 600000 -- outlives any entry written before it (ttl of what is cached: minutes)
local SKEW_MS = 1000    -- instances' clocks differ by less

local SET_UNLESS_STALE = [[
local inv = redis.call('GET', KEYS[2])
if inv and tonumber(inv) >= tonumber(ARGV[3]) - tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1]]

local INVALIDATE = [[
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('UNLINK', KEYS[1])
return redis.call('PUBLISH', ARGV[3], ARGV[4])]]

local registered = false
local function scripts(redis)
  if not registered then
    redis.register_script("evently_cache_set", SET_UNLESS_STALE)
    redis.register_script("evently_cache_invalidate", INVALIDATE)
    registered = true
  end
  return redis
end

local function now_ms() return math.floor(time.now() * 1000) end

local function l2_get(key)
  local redis = redis_or_nil()
  if not redis then return nil end
  local got = redis.call("MGET", PREFIX .. key, INV .. key)
  local raw = type(got) == "table" and got[1]
  if type(raw) ~= "string" then return nil end -- miss, null or Redis down
  local text = raw:sub(MAC + 1)
  local doc = crypto.verify(PREFIX .. key .. "\n" .. text, raw:sub(1, MAC)) and json.decode(text)
  local stamp = type(got[2]) == "string" and tonumber(got[2]) or nil
  if type(doc) ~= "table" or type(doc.exp) ~= "number" or doc.exp < now_ms()
    or type(doc.at) ~= "number" or (stamp and doc.at <= stamp) then
    stats.rejected = stats.rejected + 1
    return nil
  end
  return doc
end

local function l2_set(key, value, ttl, started_ms)
  local redis = redis_or_nil()
  if not redis then return end
  local ms = math.max(1, math.floor(ttl * 1000))
  local at = now_ms()
  local text = json.encode({ v = value, at = at, exp = at + ms })
  local mac = text and crypto.sign(PREFIX .. key .. "\n" .. text)
  if mac then
    scripts(redis).eval("evently_cache_set", { PREFIX .. key, INV .. key }, { mac .. text, ms, started_ms, SKEW_MS })
  end
end

local inflight = {}

local function load(key, ttl, loader, family)
  local started, started_ms = epoch, now_ms()
  local doc = not family and l2_get(key)
  if doc then
    stats.hits_l2 = stats.hits_l2 + 1
    if started == epoch then l1_set(key, doc.v, ttl) end
    return doc.v
  end
  stats.misses = stats.misses + 1
  stats.loads = stats.loads + 1
  local v, err = loader()
  if v == nil then return nil, err end
  if started == epoch then
    l1_set(key, v, ttl, family)
    if v ~= false and not family then l2_set(key, v, ttl, started_ms) end
  end
  return v
end

function M.fetch(key, ttl, loader, opts)
  if type(key) ~= "string" then error("cache.fetch: key must be a string", 2) end
  if type(ttl) ~= "number" or ttl <= 0 then error("cache.fetch: ttl must be > 0 seconds", 2) end
  if type(loader) ~= "function" then error("cache.fetch: loader must be a function", 2) end
  local family = opts and opts.family
  if family ~= nil and (type(family) ~= "string" or key:sub(1, #family) ~= family) then
    error("cache.fetch: opts.family must be a prefix of the key", 2)
  end
  subscribe()
  local e = l1_get(key)
  if e then
    stats.hits_l1 = stats.hits_l1 + 1
    return e.value
  end
  local waiting = inflight[key]
  if waiting then
    waiting:wait(WAIT)
    e = l1_get(key)
    if e then
      stats.hits_l1 = stats.hits_l1 + 1
      return e.value
    end -- the first loader failed or was invalidated: load ourselves
  end
  local ev = sync.event()
  inflight[key] = ev
  -- The leader may be aborted mid-load (its client gone, its deadline
  -- passed): only a <close> runs then. Without it the key stayed "in flight"
  -- and every later fetch of it waited WAIT for nothing (issue 12's stall:
  -- all 64 connections parked for 10 s on a few tokens).
  local _ <close> = setmetatable({}, { __close = function()
    if inflight[key] == ev then inflight[key] = nil end
    ev:set()
  end })
  local ok, v, err = pcall(load, key, ttl, loader, family)
  if not ok then error(v, 0) end
  return v, err
end

function M.invalidate(key, prefix)
  if type(key) ~= "string" then error("cache.invalidate: key must be a string", 2) end
  subscribe()
  stats.invalidations = stats.invalidations + 1
  local msg = (prefix and "p:" or "k:") .. key
  apply(msg)
  local redis = redis_or_nil()
  local sent
  if redis and prefix then -- a family lives in L1 only
    sent = redis.publish(CHANNEL, msg)
  elseif redis then -- stamp, delete and tell everyone, in one round trip
    sent = scripts(redis).eval("evently_cache_invalidate", { PREFIX .. key, INV .. key },
      { now_ms(), STAMP_MS, CHANNEL, msg }) ~= nil
  end
  if not sent then -- Redis down: Postgres carries the word instead
    local ok, err = require("evently.db").query("SELECT pg_notify($1, $2)", CHANNEL, msg)
    if not ok then log.warn("cache.invalidate %s: no channel reached: %s", key, tostring(err)) end
  end
end

function M.stats()
  local s = {}
  for k, v in pairs(stats) do s[k] = v end
  return s
end

return M
