--- evently.plugins: loads the plugins named in the configuration.
-- A plugin is plugins/<name>/plugin.lua returning
--   { version = "1.0", priority = 100, hooks = { request = fn, ... }, routes = fn(app)? }
-- and optionally schema.lua returning { fields = { name = {default=, description=} } }.
-- Plugins load in priority order (higher first); each hook is registered with
-- the plugin's priority, so a higher-priority plugin's hook runs first.
local hooks = require "evently.hooks"

local M = {}
M.loaded = {}

local function load_file(path)
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  return chunk()
end

local function check(name, p, path)
  if type(p) ~= "table" then error(path .. ": must return a table", 0) end
  if math.type(p.priority) ~= "integer" then error(path .. ": priority must be an integer", 0) end
  if p.hooks ~= nil and type(p.hooks) ~= "table" then error(path .. ": hooks must be a table", 0) end
  p.name = name
end

--- Loads plugins by name from dir; returns them in load order.
function M.load(dir, names)
  local list = {}
  for _, name in ipairs(names) do
    if not name:match("^[%w_%-]+$") then error("plugin name '" .. name .. "' is not a plain name", 0) end
    local path = dir .. "/" .. name .. "/plugin.lua"
    local p = load_file(path)
    check(name, p, path)
    local spath = dir .. "/" .. name .. "/schema.lua"
    local f = io.open(spath)
    if f then
      f:close()
      p.schema = load_file(spath)
    end
    list[#list + 1] = p
  end
  table.sort(list, function(a, b) return a.priority > b.priority end)
  for i = 2, #list do
    if list[i].priority == list[i - 1].priority then
      error("plugins " .. list[i - 1].name .. " and " .. list[i].name .. " share priority " .. list[i].priority, 0)
    end
  end
  for _, p in ipairs(list) do
    for hook, fn in pairs(p.hooks or {}) do hooks.on(hook, fn, p.priority) end
    if p.routes then p.routes(require "evently.app") end
  end
  M.loaded = list
  return list
end

return M
