-- Test application for the black-box integration suite (tests/integration).
-- Every route exists to exercise one platform behaviour; the tests name them.
-- test_reload.py edits the VERSION line of a copy of this file.
local app = require "evently.app"
local problem = require "evently.problem"
local time = require "evently.time"
local log = require "evently.log"
local hooks = require "evently.hooks"
local runtime = require "evently.runtime"

local VERSION = "v1"

local function pid() return runtime.worker().pid end

app.get("/version", function()
  return { version = VERSION, pid = pid() }
end)

-- JSON echo: what the handler saw.
local function echo(req)
  return {
    method = req.method,
    json = req.json,
    body_len = #req.body,
    content_type = req.headers["content-type"],
    query = req.query,
  }
end
app.post("/echo", echo)
app.put("/echo", echo)
app.patch("/echo", echo)

app.get("/headers", function(req) return { headers = req.headers } end)

-- Sleeps ?s= seconds (cooperatively), then answers with when it ran
-- (time.monotonic, the clock the tests' time.monotonic() reads). ?tag= logs
-- "sleep-start <tag>" first: the test's sign that the handler is running.
app.get("/sleep", function(req)
  local s = tonumber(req.query.s or "0.2") or 0.2
  local started = time.monotonic()
  if req.query.tag then log.info("sleep-start %s", req.query.tag) end
  time.sleep(s)
  return { slept = s, pid = pid(), started = started, ended = time.monotonic() }
end)

-- Sleeps far longer than EVENTLY_HANDLER_TIMEOUT.
app.get("/too-slow", function()
  time.sleep(60)
  return { late = true }
end)

-- A plain Lua error: 500 without internals, traceback in the log.
app.get("/boom", function()
  local t = nil
  error("kaboom: secret-internal-detail " .. tostring(t))
end)
app.get("/boom/table", function()
  error({ secret = "secret-internal-detail" })
end)

app.get("/conflict", function()
  problem.raise(409, "test-conflict", "the thing already exists",
    { errors = { { field = "name", message = "taken" } } })
end)

app.get("/items/:id", function(req) return { id = req.params.id } end)
app.delete("/items/:id/owned", function(req) return { deleted = req.params.id } end)
app.get("/files/*rest", function(req) return { rest = req.params.rest } end)
app.get("/query", function(req) return { query = req.query } end)
-- a handler filling in defaults, as list endpoints do (?page=1&size=20)
app.get("/query-defaults", function(req)
  req.query.page = req.query.page or "1"
  req.query.size = req.query.size or "20"
  return { page = req.query.page, size = req.query.size }
end)
-- a static path of the same shape as GET /items/:id, other method
app.post("/items/new", function() return 201, { created = "new" } end)

app.post("/created", function()
  return 201, { created = true }, { Location = "/items/1", ["X-Custom"] = "yes" }
end)
app.get("/text", function() return "plain text body" end)
app.get("/nobody", function() return 204 end)
app.get("/badbody", function() return true end)
app.get("/badstatus", function() return 999, { nope = true } end)
app.get("/inject", function()
  return 200, { ok = true }, { ["X-Bad"] = "a\r\nSet-Cookie: injected=1", ["X-Good"] = "fine" }
end)

app.get("/log", function(req)
  log.info("app-log-line %s", req.query.msg or "")
  return { logged = true }
end)

-- Timers: a counter driven by time.every, a flag set by time.after at load.
local ticks, after_fired = 0, false
time.every(0.05, function() ticks = ticks + 1 end)
time.after(0.05, function() after_fired = true end)
app.get("/timers", function()
  return { ticks = ticks, after_fired = after_fired, pid = pid(), now = time.monotonic() }
end)

-- time.after scheduled from a handler; answered by the same worker.
-- Times are time.monotonic: due is when the timer may fire, at when it did.
local later = {}
app.post("/later/:key", function(req)
  local key = req.params.key
  local due = time.monotonic() + 0.2
  later[key] = { due = due }
  time.after(0.2, function()
    later[key].at = time.monotonic()
    later[key].fired = (later[key].fired or 0) + 1
  end)
  return 202, { scheduled = key }
end)
app.get("/later/:key", function(req)
  local l = later[req.params.key] or {}
  return { done = l.fired ~= nil, fired = l.fired, due = l.due, at = l.at, now = time.monotonic(), pid = pid() }
end)

-- A timer body that raises: logged with its traceback, nothing else breaks.
app.post("/timer-error", function(req)
  local tag = req.query.tag or "x"
  time.after(0.01, function() error("timer-went-wrong " .. tag) end)
  return 202, { scheduled = true }
end)

-- Plugins (test_plugins.py) record themselves in req.trace.
app.get("/trace", function(req) return { trace = req.trace or {} } end)

-- Hooks of the app itself.
hooks.on("request", function(req)
  local mode = req.headers["x-test-short-circuit"]
  if mode == "status-body" then
    return 418, { short = "status-body" }, { ["X-Short"] = "yes" }
  elseif mode == "body" then
    return { short = "body-only" }
  end
end)
app.get("/hooked", function() return { hooked = true } end)
app.get("/hooked/status", function() return { hooked = true } end)
hooks.on("response", function(ctx)
  if ctx.req.path == "/hooked" then
    ctx.headers["X-Hooked"] = "yes"
  elseif ctx.req.path == "/hooked/status" then
    ctx.status = 202
    ctx.body = '{"rewritten":true}'
  end
end)

-- Descriptor exhaustion (test_abuse_connections.py): takes every free
-- descriptor of this worker for ?secs= seconds, as a leak or a hostile
-- neighbour would, then gives them back.
app.post("/fd-hog", function(req)
  local secs = tonumber(req.query.secs or "3") or 3
  local held = {}
  while true do
    local f = io.open("/dev/null")
    if not f then break end
    held[#held + 1] = f
  end
  time.after(secs, function() for _, f in ipairs(held) do f:close() end end)
  return { held = #held, pid = pid() }
end)

-- Runaway handlers (test_abuse_scripts.py): they never yield. The worker
-- stops them at the slice limit and keeps serving.
app.get("/spin", function() while true do end end)
app.get("/spin-pcall", function()
  while true do pcall(function() while true do end end) end
end)
app.get("/spin-pcall-xpcall", function()
  while true do xpcall(function() while true do end end, function() while true do end end) end
end)
app.get("/hog-memory", function()
  local t = {} -- luacheck: ignore (kept only so the collector cannot free it)
  for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end
end)
