-- #redis: the shared counts live in the Redis that `evently test` provides;
-- the outage specs point the limiter at a socket no server listens on.
local limit = require "evently.limit"
local redis = require "evently.redis"
local crypto = require "evently.crypto"
local time = require "evently.time"

-- a key no earlier run has used, so every spec starts with a full bucket
local function fresh() return "spec-" .. crypto.random_token(8) end

local RULE = { name = "spec-login", limit = 3, window = 30 } -- one unit back every 10 s

describe("evently.limit #redis", function()
  it("allows up to the limit, then refuses until one interval has passed", function()
    local key = fresh()
    for left = 2, 0, -1 do
      local ok, info = limit.check(RULE, key)
      assert.is_true(ok)
      assert.are.equal(left, info.remaining)
      assert.is_false(info.fallback)
    end
    local ok, info = limit.check(RULE, key)
    assert.is_false(ok)
    assert.are.equal(0, info.remaining)
    assert.is_true(info.retry_after >= 9 and info.retry_after <= 10, "retry_after " .. info.retry_after)
    assert.is_true(info.reset >= 29 and info.reset <= 30, "reset " .. info.reset)
    assert.are.same({ "spec-login", 3, 30 }, { info.policy, info.limit, info.window })
  end)

  it("keeps keys apart: another key has its own bucket", function()
    local a, b = fresh(), fresh()
    for _ = 1, 3 do assert.is_true((limit.check(RULE, a))) end
    assert.is_false((limit.check(RULE, a)))
    assert.is_true((limit.check(RULE, b)))
  end)

  it("is shared: a second connection sees the units the first took", function()
    local key = fresh()
    local other = assert(redis.connect())
    assert.is_true((limit.check(RULE, key)))
    assert.is_true((limit.check(RULE, key, { redis = other })))
    assert.is_true((limit.check(RULE, key)))
    local ok, info = limit.check(RULE, key, { redis = other })
    assert.is_false(ok)
    assert.is_false(info.fallback)
    other:close()
  end)

  it("gives a unit back on refund, never more than the limit", function()
    local key = fresh()
    for _ = 1, 3 do assert.is_true((limit.check(RULE, key))) end
    limit.refund(RULE, key)
    assert.is_true((limit.check(RULE, key)))
    assert.is_false((limit.check(RULE, key)))
    local other = fresh()
    limit.refund(RULE, other) -- a full bucket stays full: no credit beyond the limit
    for _ = 1, 3 do assert.is_true((limit.check(RULE, other))) end
    assert.is_false((limit.check(RULE, other)))
  end)

  it("stores keys that expire by the window's end, with no client data in them", function()
    local key = "someone@example.com"
    local rk = limit.key(RULE, key)
    assert.is_nil(rk:find("someone", 1, true))
    assert.truthy(rk:match("^evently:rl:spec%-login:%x+$"))
    redis.call("DEL", rk)
    limit.check(RULE, key)
    local ttl = redis.call("PTTL", rk)
    assert.is_true(ttl > 0 and ttl <= 10000, "one unit taken: full again in one interval, ttl " .. ttl)
    limit.check(RULE, key)
    limit.check(RULE, key)
    ttl = redis.call("PTTL", rk)
    assert.is_true(ttl > 20000 and ttl <= 30000, "ttl " .. ttl)
    for _ = 1, 3 do limit.refund(RULE, key) end
    assert.are.equal(0, redis.call("EXISTS", rk), "a full bucket needs no key")
  end)

  it("refills: a refused key is allowed again after one interval", function()
    local fast = { name = "spec-fast", limit = 2, window = 0.2 }
    local key = fresh()
    assert.is_true((limit.check(fast, key)))
    assert.is_true((limit.check(fast, key)))
    local ok, info = limit.check(fast, key)
    assert.is_false(ok)
    assert.are.equal(1, info.retry_after) -- whole seconds, never 0 on a refusal
    time.sleep(0.12)
    assert.is_true((limit.check(fast, key)))
  end)

  it("answers a refused key from memory until its retry time: hammering costs no Redis call", function()
    local rule = { name = "spec-memo", limit = 1, window = 60 }
    local key = fresh()
    assert.is_true((limit.check(rule, key)))
    assert.is_false((limit.check(rule, key)))       -- refused by Redis: remembered
    redis.call("DEL", limit.key(rule, key))          -- Redis forgets (an operator's unblock)
    local ok, info = limit.check(rule, key)
    assert.is_false(ok)                              -- still refused, from memory
    assert.is_true(info.retry_after >= 50)
    limit.refund(rule, key)                          -- a refund asks Redis again
    assert.is_true((limit.check(rule, key)))
  end)

  describe("with Redis down", function()
    local dead

    setup(function()
      dead = assert(redis.connect("unix:/tmp/evently-no-redis-" .. crypto.random_token(8) .. ".sock",
        { timeout = 0.2, connect_timeout = 0.2 }))
    end)

    teardown(function() dead:close() end)

    it("counts in the worker, so the limit still holds, and never waits", function()
      local key = fresh()
      local t0 = time.monotonic()
      for _ = 1, 3 do
        local ok, info = limit.check(RULE, key, { redis = dead })
        assert.is_true(ok)
        assert.is_true(info.fallback)
      end
      local ok, info = limit.check(RULE, key, { redis = dead })
      assert.is_false(ok)
      assert.is_true(info.retry_after >= 9 and info.retry_after <= 10)
      assert.is_true(time.monotonic() - t0 < 0.5, "checks while Redis is down must not wait")
      limit.refund(RULE, key, { redis = dead })
      assert.is_true((limit.check(RULE, key, { redis = dead })))
    end)

    it("keeps a bounded table: the oldest keys make room", function()
      local one = { name = "spec-one", limit = 1, window = 600 }
      local first = fresh()
      assert.is_true((limit.check(one, first, { redis = dead })))
      assert.is_false((limit.check(one, first, { redis = dead })))
      for i = 1, 10000 do limit.check(one, "flood-" .. i, { redis = dead }) end
      -- 10,000 newer keys pushed the first out: its bucket is forgotten
      assert.is_true((limit.check(one, first, { redis = dead })))
    end)
  end)

  describe("the 429 answer", function()
    it("is a rate-limited problem with Retry-After and the IETF RateLimit fields", function()
      local key = fresh()
      for _ = 1, 3 do limit.check(RULE, key) end
      local _, info = limit.check(RULE, key)
      local status, body, headers = limit.response(info)
      assert.are.equal(429, status)
      assert.are.equal("https://evently.dev/problems/rate-limited", body.type)
      assert.are.equal(429, body.status)
      assert.are.same({ "spec-login" }, body["violated-policies"])
      assert.are.equal("application/problem+json", headers["Content-Type"])
      assert.are.equal(tostring(info.retry_after), headers["Retry-After"])
      assert.are.equal('"spec-login";q=3;w=30', headers["RateLimit-Policy"])
      assert.are.equal('"spec-login";r=0;t=' .. info.retry_after, headers["RateLimit"])
    end)
  end)

  it("keys IPv4 by address and IPv6 by its /64", function()
    assert.are.equal("203.0.113.9", limit.address("203.0.113.9"))
    assert.are.equal("203.0.113.9", limit.address("::ffff:203.0.113.9"))
    assert.are.equal("2001:db8:0:1::/64", limit.address("2001:db8:0:1:aa:bb:cc:dd"))
    assert.are.equal("2001:db8:0:1::/64", limit.address("2001:db8:0:1::5"))
    assert.are.equal("2001:db8:0:0::/64", limit.address("2001:db8::1"))
    assert.are.equal("0:0:0:0::/64", limit.address("::1"))
  end)

  it("raises on a malformed rule", function()
    assert.has_error(function() limit.check({ name = "x y", limit = 1, window = 1 }, "k") end)
    assert.has_error(function() limit.check({ name = "x", limit = 0, window = 1 }, "k") end)
    assert.has_error(function() limit.check({ name = "x", limit = 1 }, "k") end)
    assert.has_error(function() limit.check(RULE, 42) end)
  end)
end)
