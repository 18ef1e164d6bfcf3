-- #redis: runs against the Redis that `evently test` provides (embedded or
-- EVENTLY_REDIS_URL); the outage specs start their own redis-server on a unix
-- socket in a temporary directory, so they need redis-server in PATH.
local redis = require "evently.redis"
local time = require "evently.time"

local P = "spec:redis:"

local wait_until = dofile("tests/lua/support.lua").wait_until

-- a private redis-server on a unix socket that a spec may kill and restart
local function server(dir)
  local s = { dir = dir, sock = dir .. "/redis.sock", pid = dir .. "/redis.pid" }
  function s.start()
    assert(os.execute(("redis-server --port 0 --unixsocket %s --daemonize yes --pidfile %s "
      .. "--dir %s --save '' --appendonly no --logfile %s/redis.log"):format(s.sock, s.pid, dir, dir)))
    assert(wait_until(5, function() return os.execute("test -S " .. s.sock) end), "redis-server did not start")
  end
  function s.kill()
    os.execute(("kill -9 $(cat %s) 2>/dev/null; rm -f %s"):format(s.pid, s.pid))
  end
  return s
end

describe("evently.redis #redis", function()
  setup(function()
    local keys = assert(redis.call("KEYS", P .. "*"))
    if #keys > 0 then assert(redis.call("DEL", table.unpack(keys))) end
  end)

  describe("replies", function()
    it("maps a status reply to a string", function()
      assert.are.equal("OK", redis.call("SET", P .. "s", "v"))
      assert.are.equal("PONG", redis.call("PING"))
    end)

    it("maps an integer reply to a Lua integer", function()
      local n = redis.call("INCR", P .. "n")
      assert.are.equal(1, n)
      assert.are.equal("integer", math.type(n))
    end)

    it("maps a bulk reply to a string", function()
      assert(redis.call("SET", P .. "b", "hello"))
      assert.are.equal("hello", redis.call("GET", P .. "b"))
    end)

    it("maps a nil reply to redis.null, which is not an error", function()
      local v, err = redis.call("GET", P .. "missing")
      assert.are.equal(redis.null, v)
      assert.is_nil(err)
    end)

    it("maps arrays to tables, with redis.null for missing elements", function()
      assert.are.equal(3, redis.call("RPUSH", P .. "l", "a", "b", "c"))
      assert.are.same({ "a", "b", "c" }, redis.call("LRANGE", P .. "l", 0, -1))
      assert(redis.call("SET", P .. "m1", "x"))
      assert.are.same({ "x", redis.null }, redis.call("MGET", P .. "m1", P .. "m2"))
      assert.are.same({}, redis.call("LRANGE", P .. "nolist", 0, -1))
      assert.are.same({ 1, { "two", 3 } }, redis.call("EVAL", "return {1, {'two', 3}}", 0))
    end)

    it("returns nil and a redis error for an error reply", function()
      assert(redis.call("SET", P .. "str", "x"))
      local v, err = redis.call("LPUSH", P .. "str", "y")
      assert.is_nil(v)
      assert.are.equal("redis", err.kind)
      assert.are.equal("WRONGTYPE", err.code)
      assert.truthy(err.message:find("^WRONGTYPE"))
      assert.truthy(tostring(err):find("^redis: WRONGTYPE"))
      local _, err2 = redis.call("NOSUCHCOMMAND")
      assert.are.equal("ERR", err2.code)
    end)

    it("sends and returns binary values byte for byte", function()
      local value = "a\0b\255\0\r\n$3\r\n"
      local key = P .. "bin\0key"
      assert.are.equal("OK", redis.call("SET", key, value))
      assert.are.equal(value, redis.call("GET", key))
      assert.are.equal(#value, redis.call("STRLEN", key))
    end)

    it("sends numbers as their text, floats exactly", function()
      assert.are.equal(5, redis.call("INCRBY", P .. "num", 5))
      assert.are.equal("0.1", redis.call("INCRBYFLOAT", P .. "flt", 0.1))
      assert(redis.call("SET", P .. "i", 42))
      assert.are.equal("42", redis.call("GET", P .. "i"))
    end)

    it("raises for arguments it cannot send and for connection-state commands", function()
      assert.has_error(function() redis.call("SET", P .. "k", {}) end)
      assert.has_error(function() redis.call("SET", P .. "k", true) end)
      assert.has_error(function() redis.call() end)
      for _, cmd in ipairs { "SUBSCRIBE", "MULTI", "EXEC", "SELECT", "WATCH", "MONITOR", "QUIT", "HELLO" } do
        assert.has_error(function() redis.call(cmd, "x") end)
      end
      assert.has_error(function() redis.call("CLIENT", "REPLY", "OFF") end)
    end)
  end)

  describe("pipeline", function()
    it("returns the replies in the order the commands were queued", function()
      local res = assert(redis.pipeline(function(p)
        for _ = 1, 200 do p:call("INCR", P .. "pipe") end
      end))
      assert.are.equal(200, #res)
      for i = 1, 200 do assert.are.same({ i }, res[i]) end
    end)

    it("answers each command on its own: an error reply does not fail the rest", function()
      local res = assert(redis.pipeline(function(p)
        p:call("SET", P .. "pe", "text")
        p:call("INCR", P .. "pe")
        p:call("GET", P .. "pe")
        p:call("GET", P .. "pe-missing")
      end))
      assert.are.same({ "OK" }, res[1])
      assert.is_nil(res[2][1])
      assert.are.equal("redis", res[2][2].kind)
      assert.are.same({ "text" }, res[3])
      assert.are.equal(redis.null, res[4][1])
    end)

    it("runs MULTI/EXEC inside one pipeline as a transaction", function()
      local res = assert(redis.pipeline(function(p)
        p:call("MULTI")
        p:call("INCRBY", P .. "tx", 2)
        p:call("INCRBY", P .. "tx", 3)
        p:call("EXEC")
      end))
      assert.are.same({ "OK" }, res[1])
      assert.are.same({ "QUEUED" }, res[2])
      assert.are.same({ { 2, 5 } }, res[4])
      assert.has_error(function() redis.pipeline(function(p) p:call("MULTI") end) end)
    end)

    it("returns an empty table for an empty pipeline without a round trip", function()
      assert.are.same({}, redis.pipeline(function() end))
    end)

    it("lets other coroutines' commands go on while a pipeline waits", function()
      local other
      time.after(0, function() other = redis.call("PING") end)
      local res = assert(redis.pipeline(function(p) p:call("PING"); p:call("PING") end))
      assert.are.same({ { "PONG" }, { "PONG" } }, res)
      assert(wait_until(1, function() return other end))
      assert.are.equal("PONG", other)
    end)
  end)

  describe("scripts", function()
    setup(function() table.insert(redis.script_dirs, 1, "tests/lua/fixtures/redis") end)
    teardown(function() table.remove(redis.script_dirs, 1) end)

    it("runs a script from the registry by name with EVALSHA", function()
      local s = redis.script("incr_by")
      assert.are.equal(40, #s.sha)
      assert.are.equal(s.sha, redis.call("SCRIPT", "LOAD", s.source))
      assert.are.equal(5, redis.eval("incr_by", { P .. "ev" }, { 5 }))
      assert.are.equal(7, redis.eval(s, { P .. "ev" }, { 2 }))
    end)

    it("loads the script again after NOSCRIPT and retries once", function()
      local s = redis.script("incr_by")
      assert.are.equal(1, redis.eval("incr_by", { P .. "ns" }, { 1 }))
      assert.are.equal("OK", redis.call("SCRIPT", "FLUSH"))
      local loads = s.loads
      assert.are.equal(3, redis.eval("incr_by", { P .. "ns" }, { 2 }))
      assert.are.equal(loads + 1, s.loads)
      assert.are.equal(4, redis.eval("incr_by", { P .. "ns" }, { 1 }))
      assert.are.equal(loads + 1, s.loads)
    end)

    it("returns script errors as redis errors and raises for unknown scripts", function()
      redis.register_script("spec_fail", "return redis.error_reply('BOOM it failed')")
      local v, err = redis.eval("spec_fail")
      assert.is_nil(v)
      assert.are.equal("BOOM", err.code)
      assert.has_error(function() redis.script("no_such_script") end)
      assert.has_error(function() redis.script("../etc/passwd") end)
    end)
  end)

  describe("pub/sub", function()
    it("runs the handler for each published message in its own coroutine", function()
      local got = {}
      -- The first handler waits long; the second does not. Were they run one after the other,
      -- "one" would come first; run each in its own coroutine, the second finishes first.
      local h = assert(redis.subscribe(P .. "ch", function(channel, message)
        if message == "one" then time.sleep(0.2) end
        got[#got + 1] = { channel, message }
      end))
      assert.are.equal(1, redis.publish(P .. "ch", "one"))
      assert.are.equal(1, redis.publish(P .. "ch", "two\0bytes"))
      assert(wait_until(2, function() return #got == 2 end))
      assert.are.same({ { P .. "ch", "two\0bytes" }, { P .. "ch", "one" } }, got)
      assert.is_true(h:unsubscribe())
      assert(wait_until(2, function() return redis.publish(P .. "ch", "x") == 0 end))
      time.sleep(0.05)
      assert.are.equal(2, #got)
    end)

    it("gives every handler of a channel the message; unsubscribing one keeps the others", function()
      local a, b = 0, 0
      local ha = assert(redis.subscribe(P .. "multi", function() a = a + 1 end))
      local hb = assert(redis.subscribe(P .. "multi", function() b = b + 1 end))
      assert.are.equal(1, redis.publish(P .. "multi", "m"))
      assert(wait_until(2, function() return a == 1 and b == 1 end))
      ha:unsubscribe()
      assert.is_false(ha:unsubscribe())
      assert.are.equal(1, redis.publish(P .. "multi", "m"))
      assert(wait_until(2, function() return b == 2 end))
      assert.are.equal(1, a)
      hb:unsubscribe()
    end)

    it("survives a handler that raises", function()
      local n = 0
      local h = assert(redis.subscribe(P .. "boom", function() n = n + 1; error("handler failed") end))
      redis.publish(P .. "boom", "1")
      redis.publish(P .. "boom", "2")
      assert(wait_until(2, function() return n == 2 end))
      h:unsubscribe()
    end)

    it("subscribes again to a channel whose UNSUBSCRIBE is still in flight", function()
      local n = 0
      local h = assert(redis.subscribe(P .. "again", function() n = n + 1 end))
      h:unsubscribe()
      h = assert(redis.subscribe(P .. "again", function() n = n + 1 end))
      assert(wait_until(2, function() return redis.publish(P .. "again", "x") == 1 end))
      assert(wait_until(2, function() return n >= 1 end))
      h:unsubscribe()
    end)
  end)

  describe("timeouts", function()
    it("answers 'timeout' when the reply does not come in time, and drops it when it comes", function()
      local c = assert(redis.connect())
      local t0 = time.monotonic()
      local v, err = c:call({ timeout = 0.2 }, "BLPOP", P .. "nokey", 1)
      local took = time.monotonic() - t0
      assert.is_nil(v)
      assert.are.equal("timeout", err.kind)
      assert.is_true(took >= 0.15 and took < 0.6, "took " .. took)
      -- the next command queues behind the BLPOP: it gets its own reply, not the late nil
      assert.are.equal("PONG", c:call("PING"))
      local s = c:stats()
      assert.are.equal(1, s.timeouts)
      assert.are.equal(0, s.pending)
      c:close()
    end)

    it("times out a pipeline as a whole", function()
      local c = assert(redis.connect(nil, { timeout = 0.2 }))
      local res, err = c:pipeline(function(p)
        p:call("PING")
        p:call("BLPOP", P .. "nokey", 1)
      end)
      assert.is_nil(res)
      assert.are.equal("timeout", err.kind)
      assert.are.equal("PONG", c:call({ timeout = 2 }, "PING"))
      c:close()
    end)

    it("keeps the shared connection in step after a timeout", function()
      local v, err = redis.call({ timeout = 0.05 }, "BLPOP", P .. "nokey", 0.3)
      assert.is_nil(v)
      assert.are.equal("timeout", err.kind)
      assert.are.equal("PONG", redis.call("PING"))
      assert.are.equal("OK", redis.call("SET", P .. "after", "1"))
      assert.are.equal("1", redis.call("GET", P .. "after"))
    end)
  end)

  describe("Redis down", function()
    local srv

    setup(function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      srv = server(dir)
      srv.start()
    end)

    teardown(function()
      srv.kill()
      os.execute("rm -rf " .. srv.dir)
    end)

    it("fails fast while Redis is down and works again when it is back", function()
      local c = assert(redis.connect("unix:" .. srv.sock, { timeout = 1 }))
      assert.are.equal("PONG", c:call("PING"))
      local got = {}
      assert(c:subscribe("down:ch", function(_, m) got[#got + 1] = m end))
      assert.are.equal(1, c:publish("down:ch", "before"))
      assert(wait_until(1, function() return #got == 1 end))

      -- a call in flight when the server dies
      local inflight
      time.after(0, function()
        local _, e = c:call({ timeout = 5 }, "BLPOP", "q", 10)
        inflight = e
      end)
      time.sleep(0.05)
      srv.kill()
      assert(wait_until(1, function() return inflight end))
      assert.are.equal("closed", inflight.kind)

      -- while down: every call fails at once, nothing hangs
      local waited = 0 -- summed over ten calls: one descheduling is no hang, a wait per call is
      for _ = 1, 10 do
        local t0 = time.monotonic()
        local v, err = c:call("PING")
        waited = waited + (time.monotonic() - t0)
        assert.is_nil(v)
        assert.are.equal("unavailable", err.kind)
        local n, perr = c:publish("down:ch", "lost")
        assert.is_nil(n)
        assert.are.equal("unavailable", perr.kind)
        time.sleep(0.03)
      end
      assert.is_true(waited < 0.3, "calls while down waited " .. waited .. " s")
      local s = c:stats()
      assert.is_false(s.connected)
      assert.is_false(s.subscribed)
      assert.is_true(s.connect_failures >= 1)
      assert.are.equal(1, s.channels)

      -- back: calls succeed again, and the subscription is restored
      srv.start()
      assert(wait_until(8, function() return c:call("PING") == "PONG" end))
      assert(wait_until(8, function() return c:publish("down:ch", "after") == 1 end))
      assert(wait_until(1, function() return #got == 2 end))
      assert.are.same({ "before", "after" }, got)
      s = c:stats()
      assert.is_true(s.connected)
      assert.is_true(s.subscribed)
      assert.is_true(s.reconnects >= 2) -- the command and the pub/sub connection

      c:close()
      local v, err = c:call("PING")
      assert.is_nil(v)
      assert.are.equal("closed", err.kind)
    end)

    it("a subscribe that waits fails fast too while Redis is down", function()
      srv.kill()
      local c = assert(redis.connect("unix:" .. srv.sock))
      local h, err = c:subscribe("down:x", function() end)
      assert.is_nil(h)
      assert.are.equal("unavailable", err.kind)
      assert.are.equal(0, c:stats().channels)
      c:close()
      srv.start()
    end)
  end)

  it("reports its figures", function()
    local s = redis.stats()
    assert.is_true(s.connected)
    assert.is_true(s.commands > 0)
    assert.is_true(s.errors > 0)
    assert.is_true(s.timeouts >= 1)
    assert.are.equal(0, s.pending)
    assert.are.equal("string", type(s.last_error))
  end)
end)
