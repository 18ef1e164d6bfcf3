--- evently.db: Postgres for scripts, sequential-looking, never blocking.
--   rows, err = db.query(sql, ...)      parameters $1..$n; rows[i].col; rows.affected
--   row, err  = db.one(sql, ...)        first row, or nil (err nil when there was no row)
--   v, err    = db.value(sql, ...)      first column of the first row
--   ...       = db.transaction(fn, opts?)
--       fn(tx) runs on one connection between BEGIN and COMMIT; tx.query/one/value as
--       above. An error raised in fn rolls back and is raised again; with
--       opts.retries = n a serialization failure or deadlock (40001, 40P01) retries fn
--       up to n times. opts.isolation = "serializable" | "repeatable read". The
--       connection is never pooled mid-transaction, even when the coroutine is aborted.
--   db.replica.query/one/value          the read replica (EVENTLY_REPLICA_URL), else primary
--   db.null                             SQL NULL (also JSON null)
--   db.stats(which?)                    pool figures
--   db.listen(channel, fn)              LISTEN on a dedicated connection per worker;
--                                       each NOTIFY runs fn(payload, channel) in its own
--                                       coroutine; re-listens by itself after a reconnect
-- err: {kind = "timeout"|"closed"|"unavailable"|"sql", message, sqlstate, constraint};
-- tostring(err) reads "kind: message". Map a unique violation with err.sqlstate == "23505".
local core = require "evently.db.core"
local json = require "evently.json"

local M = { null = core.null, stats = core.stats }

local function prepare(n, ...)
  if n == 0 then return end
  local args = table.pack(...)
  for i = 1, n do
    if type(args[i]) == "table" then
      local text, err = json.encode(args[i])
      if not text then error("db: parameter " .. i .. ": " .. err, 3) end
      args[i] = text
    end
  end
  return table.unpack(args, 1, n)
end

local function run(conn, sql, ...)
  if type(sql) ~= "string" then error("db: sql must be a string", 3) end
  local n = select("#", ...)
  return conn:query(sql, n, prepare(n, ...))
end

local function first(rows, err)
  if not rows then return nil, err end
  return rows[1]
end

local function scalar(rows, err)
  if not rows then return nil, err end
  local row = rows[1]
  if not row then return nil end
  local _, v = next(row)
  return v
end

local function api(which)
  local a = {}
  function a.query(sql, ...)
    local conn <close>, err = core.acquire(which)
    if not conn then return nil, err end
    return run(conn, sql, ...)
  end
  function a.one(sql, ...) return first(a.query(sql, ...)) end
  function a.value(sql, ...) return scalar(a.query(sql, ...)) end
  return a
end

local primary = api("primary")
M.query, M.one, M.value = primary.query, primary.one, primary.value
M.replica = api("replica")

local RETRYABLE = { ["40001"] = true, ["40P01"] = true }

local function retryable(err)
  return type(err) == "table" and RETRYABLE[err.sqlstate] or false
end

local function attempt(fn, opts)
  local conn <close>, err = core.acquire("primary")
  if not conn then return false, err end
  local begin = "BEGIN"
  if opts.isolation then begin = "BEGIN ISOLATION LEVEL " .. opts.isolation:upper() end
  local ok, berr = conn:query(begin, 0)
  if not ok then return false, berr end
  local tx = {}
  function tx.query(sql, ...) return run(conn, sql, ...) end
  function tx.one(sql, ...) return first(run(conn, sql, ...)) end
  function tx.value(sql, ...) return scalar(run(conn, sql, ...)) end
  local res = table.pack(pcall(fn, tx))
  if not res[1] then
    conn:query("ROLLBACK", 0) -- if this fails too, the connection is closed on release
    return false, res[2], true
  end
  local cok, cerr = conn:query("COMMIT", 0)
  if not cok then return false, cerr end
  return true, res
end

local ISOLATION = { serializable = true, ["repeatable read"] = true, ["read committed"] = true }

function M.transaction(fn, opts)
  if type(fn) ~= "function" then error("db.transaction: fn must be a function", 2) end
  opts = opts or {}
  if opts.isolation and not ISOLATION[opts.isolation] then
    error("db.transaction: unknown isolation '" .. tostring(opts.isolation) .. "'", 2)
  end
  local tries = (opts.retries or 0) + 1
  for i = 1, tries do
    local ok, res, raised = attempt(fn, opts)
    if ok then return table.unpack(res, 2, res.n) end
    if not (retryable(res) and i < tries) then
      if raised then error(res, 0) end
      return nil, res
    end
  end
end

-- LISTEN/NOTIFY: one coroutine per worker owns a dedicated connection and
-- hands each notification to its listeners; on any failure it reconnects
-- with backoff and LISTENs again, so a Postgres restart only delays delivery.
local listeners, listening = {}, false

local function quote_ident(name)
  return '"' .. name:gsub('"', '""') .. '"'
end

local function serve_notifications(conn)
  local time = require "evently.time"
  local log = require "evently.log"
  local subscribed = {}
  while next(listeners) do
    for ch in pairs(listeners) do
      if not subscribed[ch] then
        local ok, err = conn:query("LISTEN " .. quote_ident(ch), 0)
        if not ok then return err end
        subscribed[ch] = true
      end
    end
    local list, err = conn:notifications(1.0)
    if not list then return err end
    for _, n in ipairs(list) do
      for _, fn in ipairs(listeners[n.channel] or {}) do
        time.after(0, function()
          local ok, ferr = pcall(fn, n.payload, n.channel)
          if not ok then log.error("db.listen %s: handler failed: %s", n.channel, tostring(ferr)) end
        end)
      end
    end
  end
end

local function listen_loop()
  local time = require "evently.time"
  local log = require "evently.log"
  local backoff = 0.1
  while next(listeners) do
    local conn, err = core.acquire("listen")
    if conn then
      err = serve_notifications(conn)
      conn:release()
      backoff = 0.1
    end
    if err then
      log.warn("db.listen: %s; listening again in %.1f s", tostring(err), backoff)
      time.sleep(backoff)
      backoff = math.min(backoff * 2, 5)
    end
  end
  listening = false
end

function M.listen(channel, fn)
  if type(channel) ~= "string" or not channel:match("^[%w_%.%-]+$") then
    error("db.listen: channel must be a plain name", 2)
  end
  if type(fn) ~= "function" then error("db.listen: fn must be a function", 2) end
  listeners[channel] = listeners[channel] or {}
  table.insert(listeners[channel], fn)
  if not listening then
    listening = true
    require("evently.time").after(0, listen_loop)
  end
end

return M
