--- evently.redis: Redis for scripts, sequential-looking, never blocking.
--   reply, err = redis.call([opts,] cmd, ...)
--       one command on the worker's shared connection; opts = {timeout = seconds}
--       (default 2). Replies: status/bulk -> string, integer -> integer, nil ->
--       redis.null, array -> table; an error reply -> nil, err (err.kind "redis").
--   results, err = redis.pipeline(fn, opts?)
--       fn(p) queues commands with p:call(cmd, ...); they are sent back to back
--       and answered together: results[i] = {reply} or {nil, err}. MULTI/EXEC
--       inside one pipeline form a transaction. nil, err when the pipeline as a
--       whole failed (timeout, closed, unavailable).
--   script = redis.script(name)       the Lua script <scripts>/redis/<name>.lua
--                                     (or any dir in redis.script_dirs); raises
--                                     when there is none. script.sha, .source
--   reply, err = redis.eval(name_or_script, keys?, args?, opts?)
--       EVALSHA; on NOSCRIPT the script is loaded (SCRIPT LOAD) and run again once
--   redis.register_script(name, source) -> script   a script from a string
--   handle, err = redis.subscribe(channel, fn, opts?)
--       fn(channel, message) runs in its own coroutine for each message, on a
--       pub/sub connection of its own, resubscribed after reconnects. In a
--       coroutine it returns once Redis confirmed; at load time (no coroutine)
--       at once, subscribing in the background. handle:unsubscribe()
--   n, err = redis.publish(channel, message)     receivers, as PUBLISH says
--   redis.stats() -> {connected, subscribed, channels, pending, commands, errors,
--                     timeouts, reconnects, connect_failures, last_error}
--   client, err = redis.connect(url?, opts?)
--       a client with its own connections (url defaults to EVENTLY_REDIS_URL;
--       opts.timeout, opts.connect_timeout in seconds) and the same methods:
--       client:call, :pipeline, :eval, :subscribe, :publish, :stats, :close.
--       Use one for blocking commands (BLPOP...): on the shared connection they
--       hold up every command queued behind them.
--   redis.null                        the nil reply (also JSON null)
-- err: {kind = "timeout"|"closed"|"unavailable"|"redis"|"error", message, code};
-- tostring(err) reads "kind: message"; code is the reply's first word
-- ("WRONGTYPE", "NOSCRIPT"). Redis down: calls fail at once with "unavailable"
-- and succeed again when it is back. Calls run in a request, timer or script
-- coroutine.
local core = require "evently.redis.core"
local runtime = require "evently.runtime"

local M = { null = core.null }

---------------------------------------------------------------- scripts

local scripts = {} -- name -> {name, source, sha, loads}
M.script_dirs = { runtime.config().scripts .. "/redis" }

function M.register_script(name, source)
  if type(name) ~= "string" or type(source) ~= "string" then
    error("redis.register_script: name and source must be strings", 2)
  end
  local s = { name = name, source = source, sha = core.sha1(source), loads = 0 }
  scripts[name] = s
  return s
end

local function find_script(name, level)
  local s = scripts[name]
  if s then return s end
  if type(name) ~= "string" or not name:match("^[%w_%-]+$") then
    error("redis: bad script name " .. tostring(name), level + 1)
  end
  for _, dir in ipairs(M.script_dirs) do
    local f = io.open(dir .. "/" .. name .. ".lua", "rb")
    if f then
      local source = f:read("a")
      f:close()
      return M.register_script(name, source)
    end
  end
  error("redis: no script '" .. name .. "' in " .. table.concat(M.script_dirs, ", "), level + 1)
end

function M.script(name) return find_script(name, 2) end

---------------------------------------------------------------- clients

local Client = {}
Client.__index = Client

local function wrap(c)
  return setmetatable({ core = c, handlers = c:handlers() }, Client)
end

function Client:call(...) return self.core:call(...) end

local Pipe = {}
Pipe.__index = Pipe

function Pipe:call(cmd, ...)
  if type(cmd) ~= "string" then error("pipeline: command name expected", 2) end
  local cmds = self.cmds
  cmds[#cmds + 1] = table.pack(cmd, ...)
  return self
end

function Client:pipeline(fn, opts)
  if type(fn) ~= "function" then error("redis.pipeline: fn must be a function", 2) end
  local p = setmetatable({ cmds = {} }, Pipe)
  fn(p)
  return self.core:pipeline(opts, p.cmds)
end

local function append(argv, list, what)
  if list == nil then return 0 end
  if type(list) ~= "table" then error("redis.eval: " .. what .. " must be a table", 3) end
  for i = 1, #list do argv[#argv + 1] = list[i] end
  return #list
end

function Client:eval(name, keys, args, opts)
  local s = type(name) == "table" and name or find_script(name, 2)
  local argv = { "EVALSHA", s.sha, 0 }
  argv[3] = append(argv, keys, "keys")
  append(argv, args, "args")
  local res, err = self.core:call(opts, table.unpack(argv))
  if res == nil and err and err.code == "NOSCRIPT" then
    -- the server lost its script cache (restart, SCRIPT FLUSH): load, retry once
    local sha, lerr = self.core:call(opts, "SCRIPT", "LOAD", s.source)
    if not sha then return nil, lerr end
    s.loads = s.loads + 1
    res, err = self.core:call(opts, table.unpack(argv))
  end
  return res, err
end

-- clients with handlers stay alive as long as they have them, like timers
local subscribed = {} -- luacheck: ignore (written only: an anchor for the collector)

local Sub = {}
Sub.__index = Sub

function Sub:unsubscribe()
  local c = self.client
  local hs = c.handlers[self.channel]
  if not hs or hs[self] == nil then return false end
  hs[self] = nil
  if next(hs) == nil then
    c.handlers[self.channel] = nil
    c.core:unsubscribe(self.channel)
    if next(c.handlers) == nil then subscribed[c] = nil end
  end
  return true
end

function Client:subscribe(channel, fn, opts)
  if type(channel) ~= "string" then error("redis.subscribe: channel must be a string", 2) end
  if type(fn) ~= "function" then error("redis.subscribe: fn must be a function", 2) end
  local hs = self.handlers[channel]
  if not hs then
    hs = {}
    self.handlers[channel] = hs
  end
  local h = setmetatable({ client = self, channel = channel }, Sub)
  hs[h] = fn
  subscribed[self] = true
  local ok, err = self.core:subscribe(channel, opts, true)
  if not ok then
    h:unsubscribe()
    return nil, err
  end
  return h
end

function Client:publish(channel, message, opts)
  return self.core:call(opts, "PUBLISH", channel, message)
end

function Client:stats() return self.core:stats() end

function Client:close()
  subscribed[self] = nil
  return self.core:close()
end

function M.connect(url, opts)
  local c, err = core.connect(url, opts)
  if not c then return nil, err end
  return wrap(c)
end

---------------------------------------------------------------- the worker's client

local default

local function worker()
  if not default then
    local c, err = core.default()
    if not c then return nil, err end
    default = wrap(c)
  end
  return default
end

-- module functions run on the worker's client; a missing URL is an error value
for _, name in ipairs { "call", "pipeline", "eval", "subscribe", "publish" } do
  local method = Client[name]
  M[name] = function(...)
    local c, err = worker()
    if not c then return nil, err end
    return method(c, ...)
  end
end

function M.stats()
  local c, err = worker()
  if not c then return { connected = false, last_error = tostring(err) } end
  return c:stats()
end

return M
