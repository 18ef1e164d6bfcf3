--- evently.hooks: the bus plugins extend workflows through.
--   hooks.on(name, fn, priority?)  higher priority runs first (default 0); ties
--                                  run in registration order
--   hooks.run(name, ctx) -> ...    calls fn(ctx) for each; the first fn that
--                                  returns a non-nil value stops the run, and
--                                  all it returned is returned (e.g. status,
--                                  body, headers)
--   hooks.clear()                  drops every hook (reload, tests)
-- Hooks may yield (they run in the caller's coroutine).
-- Early answers (evently.early) skip Lua, so they would skip "request" and
-- "response" hooks too: while any are registered, the worker answers nothing
-- early.
local early = require "evently.early"

local M = {}
local registry = {}
local seq = 0

local function tell_early()
  early.hooked(M.count("request") + M.count("response") > 0)
end

function M.on(name, fn, priority)
  if type(name) ~= "string" then error("hooks.on: name must be a string", 2) end
  if type(fn) ~= "function" then error("hooks.on: fn must be a function", 2) end
  if priority ~= nil and math.type(priority) ~= "integer" then error("hooks.on: priority must be an integer", 2) end
  seq = seq + 1
  local list = registry[name] or {}
  list[#list + 1] = { fn = fn, priority = priority or 0, seq = seq }
  table.sort(list, function(a, b)
    if a.priority ~= b.priority then return a.priority > b.priority end
    return a.seq < b.seq
  end)
  registry[name] = list
  if name == "request" or name == "response" then tell_early() end
end

function M.run(name, ctx)
  local list = registry[name]
  if not list then return nil end
  for i = 1, #list do
    local a, b, c, d = list[i].fn(ctx)
    if a ~= nil then return a, b, c, d end
  end
  return nil
end

function M.count(name)
  return registry[name] and #registry[name] or 0
end

function M.clear()
  registry = {}
  tell_early()
end

return M
