-- #redis: the shared level of the sold-out gate (scripts/domain/shared_gate.lua)
-- against the Redis `evently test` provides.
local gate = require "domain.shared_gate"
local redis = require "evently.redis"

local n = 0
local function event_id() n = n + 1; return 900000000 + (os.time() % 100000) * 100 + n end

describe("domain.shared_gate #redis", function()
  it("reads back a closing with the event's max_per_booking", function()
    local id = event_id()
    assert.is_nil(gate.read(id))
    gate.close(id, gate.clock(), 6)
    assert.are.equal(6, gate.read(id))
  end)

  it("expires a mark by itself (the safety net)", function()
    local id = event_id()
    gate.close(id, gate.clock(), 10)
    local ttl = redis.call("PTTL", "evently:gate:" .. id)
    assert.is_true(ttl > 0 and ttl <= 5000)
  end)

  it("open removes the mark at once", function()
    local id = event_id()
    gate.close(id, gate.clock(), 10)
    gate.open(id)
    assert.is_nil(gate.read(id))
  end)

  it("refuses a mark from a batch that started before the seats came back", function()
    local id = event_id()
    local started = gate.clock() - 50 -- the batch began, then a cancel committed and reopened
    gate.open(id)
    gate.close(id, started, 10)
    assert.is_nil(gate.read(id))
  end)

  it("accepts a mark from a batch that started after the reopen", function()
    local id = event_id()
    gate.open(id)
    gate.close(id, gate.clock() + 50, 10)
    assert.are.equal(10, gate.read(id))
  end)

  it("believes only marks evently signed, for their event, while fresh (issue 15)", function()
    local key = function(id) return "evently:gate:" .. id end
    local forged = event_id()
    redis.call("SET", key(forged), "closed:4")
    assert.is_nil(gate.read(forged))
    redis.call("SET", key(forged), ("closed:4:%d:%s"):format(gate.clock(), ("ab"):rep(32)))
    assert.is_nil(gate.read(forged))
    local real, other = event_id(), event_id()
    gate.close(real, gate.clock(), 4)
    local genuine = redis.call("GET", key(real))
    assert.are.equal(4, gate.read(real))
    redis.call("SET", key(other), genuine) -- moved to another event
    assert.is_nil(gate.read(other))
    local max, at, mac = genuine:match("^closed:(%d+):(%d+):(%x+)$")
    redis.call("SET", key(real), ("closed:%d:%s:%s"):format(max + 1, at, mac)) -- altered
    assert.is_nil(gate.read(real))
    -- a genuine mark replayed long after it was written (its signed stamp says when)
    local clock = gate.clock
    gate.clock = function() return clock() - 10000 end
    local ok, err = pcall(gate.close, real, gate.clock(), 4)
    gate.clock = clock
    assert(ok, err)
    local stamp = tonumber(redis.call("GET", key(real)):match("^closed:4:(%d+):"))
    assert.is_true(stamp < gate.clock() - 9000)
    assert.is_nil(gate.read(real))
  end)
end)
