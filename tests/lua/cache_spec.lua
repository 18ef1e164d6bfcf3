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

  it("invalidates by prefix", function()
    local p = key("prefix")
    local loads = 0
    local function loader() loads = loads + 1; return { v = loads } end
    cache.fetch(p .. ":a", 60, loader)
    cache.fetch(p .. ":b", 60, loader)
    cache.invalidate(p .. ":", true)
    cache.fetch(p .. ":a", 60, loader)
    cache.fetch(p .. ":b", 60, loader)
    assert.are.equal(4, loads)
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
