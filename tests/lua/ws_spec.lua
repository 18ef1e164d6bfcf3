-- evently.ws outside a request: argument checks, the publish envelope on
-- Redis (#redis: the Redis `evently test` provides), the 400 answer. The
-- socket side (upgrade, frames, limits) is in tests/unit/test_ws.c and
-- tests/integration/test_websocket.py: it needs a real HTTP connection.
local ws = require "evently.ws"
local redis = require "evently.redis"
local json = require "evently.json"

local wait_until = dofile("tests/lua/support.lua").wait_until

describe("evently.ws", function()
  it("raises when upgrade is called outside a request handler", function()
    assert.has_error(function() ws.upgrade({}) end,
      "ws.upgrade: only a request handler may upgrade its own request")
  end)

  it("raises on publish arguments that are programmer mistakes", function()
    assert.has_error(function() ws.publish(nil, { type = "x" }) end)
    assert.has_error(function() ws.publish(1, "text") end)
    assert.has_error(function() ws.publish(1, { payload = {} }) end)
  end)

  it("returns nil and invalid for a payload JSON cannot say", function()
    local ok, err = ws.publish(1, { type = "x", payload = { f = function() end } })
    assert.is_nil(ok)
    assert.matches("^invalid: ", err)
  end)

  it("answers a refused handshake with a 400 problem naming the version it speaks", function()
    local status, body, headers = ws.bad_handshake("Upgrade: websocket is missing")
    assert.are.equal(400, status)
    assert.are.equal("https://evently.dev/problems/bad-websocket-handshake", body.type)
    assert.are.equal("Upgrade: websocket is missing", body.detail)
    assert.are.equal("13", headers["Sec-WebSocket-Version"])
    assert.are.equal("application/problem+json", headers["Content-Type"])
  end)

  it("publishes {type, payload, created_at} for the user on the shared channel #redis", function()
    local got = {}
    local h = assert(redis.subscribe(ws.CHANNEL, function(_, msg) got[#got + 1] = msg end))
    assert.is_true(ws.publish(42, { type = "booking.confirmed", payload = { booking_id = 7 } }))
    assert(wait_until(2, function() return #got == 1 end))
    h:unsubscribe()
    local uid, text = got[1]:match("^([^\n]*)\n(.*)$")
    assert.are.equal("42", uid)
    local doc = json.decode(text)
    assert.are.equal("booking.confirmed", doc.type)
    assert.are.same({ booking_id = 7 }, doc.payload)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", doc.created_at)
  end)

  it("publishes many in one pipeline, in order, and checks every item first #redis", function()
    local got = {}
    local h = assert(redis.subscribe(ws.CHANNEL, function(_, msg) got[#got + 1] = msg end))
    local before = redis.stats().commands
    assert.is_true(ws.publish_many({ { 7, { type = "a" } }, { "8", { type = "b", payload = { n = 2 } } } }))
    assert.are.equal(2, redis.stats().commands - before) -- two PUBLISHes, nothing else
    assert.is_true(ws.publish_many({}))
    assert(wait_until(2, function() return #got == 2 end))
    h:unsubscribe()
    assert.matches('^7\n{.*"type":"a"', got[1])
    assert.matches('^8\n{.*"n":2', got[2])
    assert.has_error(function() ws.publish_many({ { 7, "text" } }) end)
    local ok, err = ws.publish_many({ { 7, { type = "x" } }, { 7, { type = "x", payload = { f = print } } } })
    assert.is_nil(ok)
    assert.matches("^invalid", err)
  end)

  it("counts no connections in a process that upgraded none", function()
    assert.are.equal(0, ws.connections())
    assert.are.equal(0, ws.connections(42))
  end)
end)
