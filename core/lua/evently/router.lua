--- evently.router: method + path matching with parameters.
-- Patterns are "/events/:id" or "/events/{id}"; a segment "*name" at the end
-- takes the rest of the path. Static paths are one table lookup; patterned
-- ones are tried in the order they were added.
--
--   local r = router.new()
--   r:add("GET", "/events/:id", handler, "events.show")
--   local route, params, allowed = r:match("GET", "/events/7")
--     route: {method, pattern, handler, name} or nil
--     params: {id = "7"} (percent-decoded)
--     allowed: when the path exists but not for this method, "GET, HEAD"
local M = {}
M.__index = M

function M.new()
  return setmetatable({ static = {}, dynamic = {} }, M)
end

local function split(path)
  local segs = {}
  for seg in path:gmatch("[^/]+") do segs[#segs + 1] = seg end
  return segs
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
M.unescape = unescape

local function compile(pattern)
  local segs, dynamic = split(pattern), false
  for i, seg in ipairs(segs) do
    local name = seg:match("^:([%w_]+)$") or seg:match("^{([%w_]+)}$")
    local rest = seg:match("^%*([%w_]+)$")
    if name then
      segs[i] = { param = name }; dynamic = true
    elseif rest then
      if i ~= #segs then error("router: '*" .. rest .. "' must be the last segment of " .. pattern, 3) end
      segs[i] = { rest = rest }; dynamic = true
    end
  end
  return segs, dynamic
end

function M:add(method, pattern, handler, name)
  if type(handler) ~= "function" then error("router: handler for " .. pattern .. " must be a function", 3) end
  if pattern:sub(1, 1) ~= "/" then error("router: pattern must start with '/': " .. pattern, 3) end
  local segs, dynamic = compile(pattern)
  local route = { method = method:upper(), pattern = pattern, handler = handler, name = name or pattern, segs = segs }
  if dynamic then
    local entry
    for _, e in ipairs(self.dynamic) do if e.pattern == pattern then entry = e end end
    if not entry then
      entry = { pattern = pattern, segs = segs, methods = {} }
      self.dynamic[#self.dynamic + 1] = entry
    end
    entry.methods[route.method] = route
  else
    local key = pattern == "/" and "/" or "/" .. table.concat(segs, "/")
    self.static[key] = self.static[key] or {}
    self.static[key][route.method] = route
  end
  return route
end

local function match_segs(segs, parts)
  local params = {}
  for i, seg in ipairs(segs) do
    local part = parts[i]
    if type(seg) == "table" and seg.rest then
      params[seg.rest] = unescape(table.concat(parts, "/", i))
      return params
    end
    if not part then return nil end
    if type(seg) == "table" then
      params[seg.param] = unescape(part)
    elseif seg ~= part then
      return nil
    end
  end
  if #parts ~= #segs then return nil end
  return params
end

local function allow_list(methods)
  local list = {}
  for m in pairs(methods) do list[#list + 1] = m end
  if methods.GET and not methods.HEAD then list[#list + 1] = "HEAD" end
  table.sort(list)
  return table.concat(list, ", ")
end

local function pick(methods, method)
  return methods[method] or (method == "HEAD" and methods.GET) or nil
end

local NO_PARAMS = setmetatable({}, { __newindex = function() error("params are read-only", 2) end })

function M:match(method, path)
  local methods = self.static[path]
  if not methods and #path > 1 and path:sub(-1) == "/" then methods = self.static[path:sub(1, -2)] end
  local allowed
  if methods then
    local route = pick(methods, method)
    if route then return route, NO_PARAMS end
    allowed = allow_list(methods) -- a pattern may still take this method
  end
  local parts = split(path)
  for _, entry in ipairs(self.dynamic) do
    local params = match_segs(entry.segs, parts)
    if params then
      local route = pick(entry.methods, method)
      if route then return route, params end
      allowed = allowed and (allowed .. ", " .. allow_list(entry.methods)) or allow_list(entry.methods)
    end
  end
  if allowed then -- several patterns of one shape: one sorted list, no repeats
    local seen, list = {}, {}
    for m in allowed:gmatch("[^, ]+") do
      if not seen[m] then seen[m] = true; list[#list + 1] = m end
    end
    table.sort(list)
    allowed = table.concat(list, ", ")
  end
  return nil, nil, allowed
end

return M
