--- evently.ws: WebSocket connections and per-user pushes across workers and instances.
--   conn, err = ws.upgrade(req, opts?)            [yields] in a request handler only
--       Checks the handshake of req (GET, Upgrade: websocket, Connection: upgrade,
--       Sec-WebSocket-Version: 13, Sec-WebSocket-Key), answers 101 and takes the
--       socket. Bad handshake: nil, why (nothing answered yet: the handler answers,
--       e.g. ws.bad_handshake(why)); a draining worker: nil, "draining" (503). After
--       the upgrade the handler has no deadline and its return answers nothing;
--       the connection stays open until either
--       side closes it, whether or not the handler still runs.
--       opts: user_id (register the connection for ws.publish; a user holds at
--       most max_per_user sockets per worker, default the ws_max_per_user setting:
--       a new one closes the user's oldest with 1008), max_message
--       (65536: over it the peer gets 1009), max_queued (1 MiB unsent: 1008),
--       max_unread (256 KiB received but not read: 1008), ping_interval (30 s; a
--       peer silent for a whole interval is dropped), close_timeout (5 s),
--       max_lifetime (the ws_max_lifetime setting, 24 h: then closed 1001 and the
--       client reconnects). A worker holding ws_max_per_worker sockets answers
--       nil, "busy" (ws.bad_handshake: 503 with Retry-After).
--   conn:send(text, binary?) -> true | nil, "closed"|"overloaded"   never yields
--   conn:receive(timeout?) -> msg, "text"|"binary" | nil, "closed", code | nil, "timeout"
--       [yields] one receiver at a time; without a timeout it waits until a message
--       comes or the connection ends (pings bound how long a dead peer lasts)
--   conn:close(code?, reason?)   close handshake (1000 by default)
--   conn:is_open()
--   ok, err = ws.publish(user_id, msg)
--       msg = {type = "booking.confirmed", payload = {...}, created_at = ?}: sends
--       the JSON {type, payload, created_at} to every open connection registered
--       for user_id on every worker of every instance (Redis pub/sub, one channel;
--       each worker subscribes once and keeps its own registry). created_at
--       defaults to now (RFC 3339, UTC). true once Redis took it (delivery is best
--       effort: users not connected get nothing); nil, err when Redis cannot
--       (err.kind "unavailable", "timeout", ...); a msg JSON cannot encode: nil,
--       "invalid: ...". Runs in any coroutine.
--   ok, err = ws.publish_many(items)
--       items = {{user_id, msg}, ...}: ws.publish for each, sent to Redis back to
--       back and answered together (one round trip, not one per item). true
--       once Redis took them all; nil, err when it did not take them all (the
--       first error; some may have gone: delivery is best effort).
--   ws.connections(user_id?) -> number of open registered connections in this worker
local core = require "evently.ws.core"
local json = require "evently.json"
local log = require "evently.log"
local time = require "evently.time"

local M = {}

local CHANNEL = "evently:ws"

-- user id (as a string: Redis carries text) -> { [conn] = true }, this worker's
local by_user = {}
local user_of = setmetatable({}, { __mode = "k" })
local opened_at = setmetatable({}, { __mode = "k" }) -- conn -> sequence number
local sequence = 0

local function forget(conn)
  local uid = user_of[conn]
  if not uid then return end
  user_of[conn] = nil
  local conns = by_user[uid]
  if conns then
    conns[conn] = nil
    if next(conns) == nil then by_user[uid] = nil end
  end
end

-- A receive that reports the end also drops the connection from the registry;
-- pushes prune the ones nobody was receiving on.
local raw_receive = core.methods.receive
function core.methods.receive(conn, timeout)
  local msg, kind, code = raw_receive(conn, timeout)
  if msg == nil and kind == "closed" then forget(conn) end
  return msg, kind, code
end

-- "<user id>\n<json>": the JSON text goes to the sockets as it came.
local function deliver(_, raw)
  local uid, text = raw:match("^([^\n]*)\n(.*)$")
  local conns = uid and by_user[uid]
  if not conns then return end
  for conn in pairs(conns) do
    if not (conn:is_open() and conn:send(text)) then forget(conn) end
  end
end

-- Subscribed once per worker, confirmed before the first 101 goes out, so a
-- push published after the client saw its upgrade reaches it. A failure (Redis
-- down) is retried by the next upgrade.
local subscribed = false
local function subscribe()
  if subscribed then return true end
  subscribed = true
  local ok_r, redis = pcall(require, "evently.redis")
  local handle, err
  if ok_r then handle, err = redis.subscribe(CHANNEL, deliver) else err = redis end
  if not handle then
    subscribed = false
    log.warn("ws: cannot subscribe to %s (pushes will not arrive): %s", CHANNEL, tostring(err))
    return nil, err
  end
  return true
end

local configured_max
local function default_max_per_user()
  configured_max = configured_max or require("evently.runtime").config().ws_max_per_user
  return configured_max
end

-- One user cannot hold more than `max` sockets in a worker: beyond it the
-- oldest goes (a new tab wins over a forgotten one), so the cost of one
-- account stays bounded whatever its client does.
local function make_room(conns, max)
  local n, oldest = 0, nil
  for c in pairs(conns) do
    n = n + 1
    if not oldest or opened_at[c] < opened_at[oldest] then oldest = c end
  end
  if n >= max and oldest then
    oldest:close(1008, "too many connections for this user")
    conns[oldest], user_of[oldest] = nil, nil
    return make_room(conns, max)
  end
end

local function register(conn, user_id, max)
  local uid = tostring(user_id)
  local conns = by_user[uid]
  if not conns then
    conns = {}
    by_user[uid] = conns
  end
  for c in pairs(conns) do -- closed ones whose handler never read the end
    if not c:is_open() then conns[c], user_of[c] = nil, nil end
  end
  make_room(conns, max)
  sequence = sequence + 1
  conns[conn] = true
  user_of[conn] = uid
  opened_at[conn] = sequence
end

function M.upgrade(req, opts)
  if type(req) ~= "table" then error("ws.upgrade: req must be the request table", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("ws.upgrade: opts must be a table", 2) end
  local user_id = opts and opts.user_id
  -- a draining worker has already closed its sockets: a new one would only
  -- be cut at the drain timeout; the client retries and reaches the new generation
  if require("evently.runtime").worker().draining then return nil, "draining" end
  if user_id ~= nil then
    if type(user_id) ~= "number" and type(user_id) ~= "string" then
      error("ws.upgrade: opts.user_id must be a number or a string", 2)
    end
    subscribe()
  end
  local max = opts and opts.max_per_user or default_max_per_user()
  if type(max) ~= "number" or max < 1 then error("ws.upgrade: opts.max_per_user must be >= 1", 2) end
  local conn, err = core.upgrade(opts)
  if not conn then return nil, err end
  if user_id ~= nil then register(conn, user_id, max) end
  return conn
end

--- The answer for an upgrade ws.upgrade refused: status, body, headers. A bad
-- handshake is 400; a draining worker 503.
function M.bad_handshake(why)
  local problem = require "evently.problem"
  if why == "draining" then return problem.response(503, "unavailable", "the server is restarting; retry") end
  if why == "busy" then
    local s, b, h = problem.response(503, "busy", "this server holds as many live connections as it may; retry")
    h["Retry-After"] = "5"
    return s, b, h
  end
  local s, b, h = problem.response(400, "bad-websocket-handshake", why)
  h["Sec-WebSocket-Version"] = "13" -- RFC 6455 4.4: the version we speak
  return s, b, h
end

local function rfc3339_now()
  local now = time.now()
  local ms = math.floor((now % 1) * 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(now)) .. string.format(".%03dZ", ms)
end

-- The line ws.publish sends for (user_id, msg), or nil, err.
local function line_of(user_id, msg, level)
  if type(user_id) ~= "number" and type(user_id) ~= "string" then
    error("ws.publish: user_id must be a number or a string", level + 1)
  end
  if type(msg) ~= "table" or type(msg.type) ~= "string" then
    error("ws.publish: msg must be a table with a string type", level + 1)
  end
  local doc = {
    type = msg.type,
    payload = msg.payload == nil and json.null or msg.payload,
    created_at = msg.created_at or rfc3339_now(),
  }
  local text, err = json.encode(doc)
  if not text then return nil, "invalid: " .. tostring(err) end
  return tostring(user_id) .. "\n" .. text
end

local function redis_client()
  local ok, redis = pcall(require, "evently.redis")
  if not ok then return nil, "unavailable: " .. tostring(redis) end
  return redis
end

function M.publish(user_id, msg)
  local line, err = line_of(user_id, msg, 2)
  if not line then return nil, err end
  local redis, rerr = redis_client()
  if not redis then return nil, rerr end
  local n, perr = redis.publish(CHANNEL, line)
  if not n then return nil, perr end
  return true
end

function M.publish_many(items)
  if type(items) ~= "table" then error("ws.publish_many: a list of {user_id, msg} expected", 2) end
  local lines = {}
  for i, item in ipairs(items) do
    if type(item) ~= "table" then error("ws.publish_many: item " .. i .. " is not {user_id, msg}", 2) end
    local line, err = line_of(item[1], item[2], 2)
    if not line then return nil, err end
    lines[i] = line
  end
  if #lines == 0 then return true end
  local redis, rerr = redis_client()
  if not redis then return nil, rerr end
  local results, perr = redis.pipeline(function(p)
    for _, line in ipairs(lines) do p:call("PUBLISH", CHANNEL, line) end
  end)
  if not results then return nil, perr end
  for _, r in ipairs(results) do
    if r[1] == nil then return nil, r[2] end
  end
  return true
end

function M.connections(user_id)
  local n = 0
  for uid, conns in pairs(by_user) do
    if user_id == nil or uid == tostring(user_id) then
      for c in pairs(conns) do
        if c:is_open() then n = n + 1 end
      end
    end
  end
  return n
end

M.CHANNEL = CHANNEL
return M
