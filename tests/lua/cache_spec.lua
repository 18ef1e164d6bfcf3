-- #pg #redis: the cache against the Redis and Postgres `evently test` provides.
local cache = require "evently.cache"
local redis = require "evently.redis"
local time = require "evently.time"

local n = 0
local function key(name) n = n + 1; return "spec:" .. name .. ":" .. n .. ":" .. time.now() end

describe("evently.cache #redis", function()
  it("loads once, then answers from L1", function()
    local k, loads = key("l1"), 0
    local function loader() loads = loads + 1; return { v = 1 } end
    assert.are.same({ v = 1 }, cache.fetch(k, 60, loader))
    assert.are.same({ v = 1 }, cache.fetch(k, 60, loader))
    assert.are.equal(1, loads)
  end)

  it("stores in Redis so another worker's miss is an L2 hit", function()
    local k = key("l2")
    cache.fetch(k, 60, function() return { v = "shared" } end)
    local raw = redis.call("GET", "evently:cache:" .. k)
    assert.is_string(raw)
    assert.truthy(raw:find("shared", 1, true))
  end)

  it("calls the loader once for concurrent fetches of one key (no stampede)", function()
    local k, loads, got = key("flight"), 0, {}
    local function loader() loads = loads + 1; time.sleep(0.05); return { v = loads } end
    for i = 1, 10 do
      time.after(0, function() got[i] = cache.fetch(k, 60, loader) end)
    end
    local deadline = time.monotonic() + 3
    while #got < 10 and time.monotonic() < deadline do time.sleep(0.01) end
    assert.are.equal(10, #got)
    assert.are.equal(1, loads)
    for i = 1, 10 do assert.are.same({ v = 1 }, got[i]) end
  end)

  it("passes a loader's failure through without caching it", function()
    local k, loads = key("fail"), 0
    local v, err = cache.fetch(k, 60, function() loads = loads + 1; return nil, "db down" end)
    assert.is_nil(v); assert.are.equal("db down", err)
    cache.fetch(k, 60, function() loads = loads + 1; return { ok = true } end)
    assert.are.equal(2, loads)
  end)

  it("expires entries after their ttl", function()
    local k, loads = key("ttl"), 0
    local function loader() loads = loads + 1; return { v = loads } end
    cache.fetch(k, 0.05, loader)
    time.sleep(0.1)
    assert.are.same({ v = 2 }, cache.fetch(k, 0.05, loader))
  end)

  it("invalidates a key in L1 and L2", function()
    local k, loads = key("inv"), 0
    local function loader() loads = loads + 1; return { v = loads } end
    cache.fetch(k, 60, loader)
    cache.invalidate(k)
    assert.is_true(redis.call("EXISTS", "evently:cache:" .. k) == 0)
    assert.are.same({ v = 2 }, cache.fetch(k, 60, loader))
  end)

  it("invalidates a family at once", function()
    local p = key("family") .. ":"
    local loads = 0
    local function loader() loads = loads + 1; return { v = loads } end
    cache.fetch(p .. "a", 60, loader, { family = p })
    cache.fetch(p .. "b", 60, loader, { family = p })
    cache.fetch(p .. "a", 60, loader, { family = p })
    assert.are.equal(2, loads)
    cache.invalidate(p, true)
    cache.fetch(p .. "a", 60, loader, { family = p })
    cache.fetch(p .. "b", 60, loader, { family = p })
    assert.are.equal(4, loads)
  end)

  it("keeps a family and a loader's `false` out of Redis: a client cannot grow it", function()
    local p = key("bounded") .. ":"
    cache.fetch(p .. "q=anything", 60, function() return { v = 1 } end, { family = p })
    assert.are.equal(0, redis.call("EXISTS", "evently:cache:" .. p .. "q=anything"))
    local miss, loads = key("unknown-id"), 0
    assert.is_false(cache.fetch(miss, 60, function() loads = loads + 1; return false end))
    assert.is_false(cache.fetch(miss, 60, function() loads = loads + 1; return false end))
    assert.are.equal(1, loads) -- remembered in L1
    assert.are.equal(0, redis.call("EXISTS", "evently:cache:" .. miss))
  end)

  it("refuses a family that is not a prefix of the key", function()
    assert.has_error(function() cache.fetch("a:b", 60, function() return 1 end, { family = "x:" }) end)
  end)

  it("costs the same to invalidate whatever Redis holds: it never scans", function()
    local p = key("scan") .. ":"
    local function timed()
      local t0 = time.monotonic()
      for _ = 1, 20 do cache.invalidate(p, true) end
      return time.monotonic() - t0
    end
    local before = timed()
    local filler = {}
    for i = 1, 20000 do filler[#filler + 1] = p .. "junk:" .. i; filler[#filler + 1] = "x" end
    for i = 1, #filler, 2000 do redis.call("MSET", table.unpack(filler, i, math.min(i + 1999, #filler))) end
    local after = timed()
    for i = 1, #filler, 2000 do
      local keys = {}
      for j = i, math.min(i + 1999, #filler), 2 do keys[#keys + 1] = filler[j] end
      redis.call("UNLINK", table.unpack(keys))
    end
    -- a SCAN over 10,000 keys per call would take ~20 x 5 ms; this is ~20 round trips
    assert.is_true(after < before * 3 + 0.05, ("before %.4fs after %.4fs"):format(before, after))
  end)

  it("believes only Redis entries it signed, for their key, until they expire (issue 15)", function()
    local loads = 0
    local function as_user() loads = loads + 1; return { role = "user" } end
    -- an entry evently wrote is an L2 hit once this worker's L1 lost it
    local own = key("signed")
    cache.fetch(own, 60, as_user)
    local signed = redis.call("GET", "evently:cache:" .. own)
    time.sleep(0.1) -- the subscription is up
    redis.publish("evently_cache_invalidate", "k:" .. own)
    local deadline = time.monotonic() + 2
    local hits = cache.stats().hits_l2
    while cache.stats().hits_l2 == hits and time.monotonic() < deadline do
      assert.are.same({ role = "user" }, cache.fetch(own, 60, function() error("L2 was not believed") end))
      time.sleep(0.01)
    end
    assert.are.equal(hits + 1, cache.stats().hits_l2)
    -- a forged entry, with or without a MAC, is a miss
    local rejected = cache.stats().rejected
    local forged = key("forged")
    redis.call("SET", "evently:cache:" .. forged, '{"v":{"role":"admin"},"exp":99999999999999}')
    assert.are.same({ role = "user" }, cache.fetch(forged, 60, as_user))
    local forged2 = key("forged")
    redis.call("SET", "evently:cache:" .. forged2, ("0"):rep(64) .. '{"v":{"role":"admin"},"exp":99999999999999}')
    assert.are.same({ role = "user" }, cache.fetch(forged2, 60, as_user))
    -- a genuine entry moved to another key is a miss
    local moved = key("moved")
    redis.call("SET", "evently:cache:" .. moved, signed)
    assert.are.same({ role = "user" }, cache.fetch(moved, 60, as_user))
    -- a genuine entry put back after its expiry is a miss
    local old = key("replayed")
    cache.fetch(old, 0.05, as_user)
    local stale = redis.call("GET", "evently:cache:" .. old)
    time.sleep(0.1)
    redis.call("SET", "evently:cache:" .. old, stale)
    assert.are.same({ role = "user" }, cache.fetch(old, 60, as_user))
    assert.are.equal(rejected + 4, cache.stats().rejected)
    assert.are.equal(6, loads) -- own, both forged, moved, and the replayed key twice
  end)

  it("never writes to Redis what it read before another worker invalidated it (issue 15)", function()
    local k = key("race")
    local v = cache.fetch(k, 60, function()
      -- meanwhile another worker revokes: its stamp is in Redis, its message still on the way
      redis.call("SET", "evently:cache:inv:" .. k, tostring(math.floor(time.now() * 1000)), "PX", 60000)
      return { role = "user" }
    end)
    assert.are.same({ role = "user" }, v) -- this request still gets what it read
    assert.is_not_string(redis.call("GET", "evently:cache:" .. k), "a stale entry reached Redis")
    -- a genuine entry put back after its key was invalidated is refused
    local k2, loads = key("replay-after-invalidate"), 0
    cache.fetch(k2, 60, function() loads = loads + 1; return { role = "user" } end)
    local captured = redis.call("GET", "evently:cache:" .. k2)
    assert.is_string(captured)
    time.sleep(0.002)
    cache.invalidate(k2)
    redis.call("SET", "evently:cache:" .. k2, captured)
    local rejected = cache.stats().rejected
    cache.fetch(k2, 60, function() loads = loads + 1; return { role = "user" } end)
    assert.are.equal(2, loads)
    assert.are.equal(rejected + 1, cache.stats().rejected)
  end)

  it("hears invalidations published by others", function()
    local k, loads = key("remote"), 0
    local function loader() loads = loads + 1; return { v = loads } end
    cache.fetch(k, 60, loader)
    time.sleep(0.1) -- let the subscription settle
    redis.call("DEL", "evently:cache:" .. k)
    redis.publish("evently_cache_invalidate", "k:" .. k)
    local deadline = time.monotonic() + 2
    while loads < 2 and time.monotonic() < deadline do
      cache.fetch(k, 60, loader)
      time.sleep(0.02)
    end
    assert.are.equal(2, loads)
  end)
end)

describe("the embedded Redis #redis", function()
  it("is bounded and may evict any key (the app never depends on one staying)", function()
    local mem = redis.call("CONFIG", "GET", "maxmemory")
    local policy = redis.call("CONFIG", "GET", "maxmemory-policy")
    assert.are.equal(256 * 1024 * 1024, tonumber(mem[2]))
    assert.are.equal("allkeys-lru", policy[2])
  end)
end)
