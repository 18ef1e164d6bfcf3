-- #redis: the shared level of the sold-out gate (scripts/domain/soldout_mark.lua)
-- against the Redis `evently test` provides.
local mark = require "domain.soldout_mark"
local redis = require "evently.redis"

local n = 0
local function event_id() n = n + 1; return 900000000 + (os.time() % 100000) * 100 + n end

describe("domain.soldout_mark #redis", function()
  it("reads back a mark with the event's max_per_booking", function()
    local id = event_id()
    assert.is_nil(mark.read(id))
    mark.mark(id, mark.clock(), 6)
    assert.are.equal(6, mark.read(id))
  end)

  it("expires a mark by itself (the safety net)", function()
    local id = event_id()
    mark.mark(id, mark.clock(), 10)
    local ttl = redis.call("PTTL", "evently:soldout:" .. id)
    assert.is_true(ttl > 0 and ttl <= 5000)
  end)

  it("reopen removes the mark at once", function()
    local id = event_id()
    mark.mark(id, mark.clock(), 10)
    mark.reopen(id)
    assert.is_nil(mark.read(id))
  end)

  it("refuses a mark from a batch that started before the seats came back", function()
    local id = event_id()
    local started = mark.clock() - 50 -- the batch began, then a cancel committed and reopened
    mark.reopen(id)
    mark.mark(id, started, 10)
    assert.is_nil(mark.read(id))
  end)

  it("accepts a mark from a batch that started after the reopen", function()
    local id = event_id()
    mark.reopen(id)
    mark.mark(id, mark.clock() + 50, 10)
    assert.are.equal(10, mark.read(id))
  end)

  it("believes only marks evently signed, for their event, while fresh (issue 15)", function()
    local key = function(id) return "evently:soldout:" .. id end
    local forged = event_id()
    redis.call("SET", key(forged), "soldout:4")
    assert.is_nil(mark.read(forged))
    redis.call("SET", key(forged), ("soldout:4:%d:%s"):format(mark.clock(), ("ab"):rep(32)))
    assert.is_nil(mark.read(forged))
    local real, other = event_id(), event_id()
    mark.mark(real, mark.clock(), 4)
    local genuine = redis.call("GET", key(real))
    assert.are.equal(4, mark.read(real))
    redis.call("SET", key(other), genuine) -- moved to another event
    assert.is_nil(mark.read(other))
    local max, at, mac = genuine:match("^soldout:(%d+):(%d+):(%x+)$")
    redis.call("SET", key(real), ("soldout:%d:%s:%s"):format(max + 1, at, mac)) -- altered
    assert.is_nil(mark.read(real))
    -- a genuine mark replayed long after it was written (its signed stamp says when)
    local clock = mark.clock
    mark.clock = function() return clock() - 10000 end
    local ok, err = pcall(mark.mark, real, mark.clock(), 4)
    mark.clock = clock
    assert(ok, err)
    local stamp = tonumber(redis.call("GET", key(real)):match("^soldout:4:(%d+):"))
    assert.is_true(stamp < mark.clock() - 9000)
    assert.is_nil(mark.read(real))
  end)
end)
