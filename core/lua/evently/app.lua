--- evently.app: routes and the request dispatcher.
--   app.get(path, handler, name?) / post / put / patch / delete / route(method, ...)
--   handler(req) returns one of:
--     body                      200; a table becomes JSON, a string text/plain
--     status, body?, headers?   as given (nil body: empty)
--     problem.response(...)     a problem document
--   req: method, path, params, query (decoded table), headers (lower-case
--        names), body (raw string), json (decoded body, when JSON), id
--        (request id), peer.
-- JSON bodies are read by evently.json (RFC 8259 only) before the handler
-- runs: malformed ones are answered 400 malformed-json; well-formed ones with
-- a string that is not UTF-8 or a number past the double range 422
-- validation, errors[] naming each such field (as validate.lua does). An error
-- a handler raises is answered by problem.from_err, the one map from errors to
-- answers: problem.raise() as that problem, a database/Redis error value as 503
-- unavailable, anything else as 500 without internals; all but problems are
-- logged with their traceback and request id.
-- Hooks: "request" (ctx = req; return a response to short-circuit) and
-- "response" (ctx = {req=, status=, headers=, body=}; may change them).
local json = require "evently.json"
local router = require "evently.router"
local problem = require "evently.problem"
local hooks = require "evently.hooks"
local log = require "evently.log"
local set_route = require("evently.runtime").set_route

local M = {}
local routes = router.new()

function M.route(method, path, handler, name)
  return routes:add(method, path, handler, name)
end
for _, m in ipairs({ "get", "post", "put", "patch", "delete", "options" }) do
  M[m] = function(path, handler, name) return routes:add(m:upper(), path, handler, name) end
end

--- Drops every route (tests and reloads start from nothing).
function M.reset()
  routes = router.new()
end

local function parse_query(qs)
  local q = {}
  if not qs or qs == "" then return q end
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = router.unescape((k:gsub("+", " ")))
    v = router.unescape((v:gsub("+", " ")))
    if k ~= "" and q[k] == nil then q[k] = v end
  end
  return q
end
M.parse_query = parse_query

local JSON_HEADERS = { ["Content-Type"] = "application/json" }
local TEXT_HEADERS = { ["Content-Type"] = "text/plain; charset=utf-8" }

-- Normalises what a handler returned into status, headers, body string; nil
-- and a reason when the body cannot be sent (no pcall on the way of every
-- answer: json.encode returns its failure).
local function finish(status, body, headers)
  if type(status) ~= "number" then
    status, body, headers = 200, status, nil
  end
  if body == nil then
    return status, headers or {}, ""
  end
  local kind = type(body)
  if kind == "table" then
    local text, err = json.encode(body)
    if not text then return nil, "response body cannot be encoded as JSON: " .. err end
    if headers then
      if not headers["Content-Type"] and not headers["content-type"] then
        headers["Content-Type"] = "application/json"
      end
      return status, headers, text
    end
    return status, JSON_HEADERS, text
  elseif kind == "string" then
    return status, headers or TEXT_HEADERS, body
  end
  return nil, "handler returned a " .. kind .. " body"
end

-- xpcall's handler: keeps the error value (problem.from_err maps it by kind)
-- and takes the traceback while the stack is still there.
local TRACED = {}
local function traceback(err)
  if problem.is(err) then return err end
  return setmetatable({ err = err, trace = debug.traceback(tostring(err), 2) }, TRACED)
end

local function wants_json(req)
  local ct = req.headers["content-type"]
  return ct and ct:lower():find("json", 1, true) ~= nil
end

local function handle(req)
  local a, b, c = hooks.run("request", req)
  if a ~= nil then return a, b, c end
  return req.route.handler(req)
end

-- Route names served on the operations listener (ops_listen: req.listener
-- is "ops"); evently.ops adds its own. Nothing else answers there.
M.operations = {}

--- Called by the C core for every request, in its own coroutine.
-- Returns status, headers, body, route name.
function M.dispatch(req)
  local route, params, allowed = routes:match(req.method, req.path)
  if req.listener == "ops" and not (route and M.operations[route.name]) then
    local s, b, h = problem.response(404, "not-found",
      "the operations listener serves /health, /health/ready and /metrics")
    return s, h, json.encode(b), "unmatched"
  end
  if not route then
    if allowed then
      local s, b, h = problem.response(405, "method-not-allowed", req.method .. " is not allowed here")
      h.Allow = allowed
      return s, h, json.encode(b), "unmatched"
    end
    local s, b, h = problem.response(404, "not-found", "no route for " .. req.path)
    return s, h, json.encode(b), "unmatched"
  end
  req.route, req.params = route, params
  set_route(route.name)
  req.query = parse_query(req.query_string)
  if req.body ~= "" and wants_json(req) then
    local doc, err, invalid = json.decode(req.body)
    if doc == nil then
      local s, b, h
      if invalid then -- JSON, but a string is not UTF-8 or a number overflows
        s, b, h = problem.response(422, "validation", "some fields are not valid", { errors = invalid })
      else
        s, b, h = problem.response(400, "malformed-json", "request body is not valid JSON: " .. tostring(err))
      end
      return s, h, json.encode(b), route.name
    end
    req.json = doc
  end
  local ok, status, body, headers = xpcall(handle, traceback, req)
  if not ok then
    local err = status
    if getmetatable(err) == TRACED then
      log.error("handler for %s %s failed: %s", req.method, route.pattern, err.trace)
      err = err.err
    end
    status, body, headers = problem.from_err(err, req.id)
  end
  local s, h, text = finish(status, body, headers)
  if not s then
    log.error("handler for %s %s: %s", req.method, route.pattern, h)
    s, h, text = 500, { ["Content-Type"] = "application/problem+json" },
      json.encode(problem.document(500, "internal", nil, { request_id = req.id }))
  end
  if hooks.count("response") > 0 then
    local own = {} -- h may be a shared constant: hooks get a copy to change
    for k, v in pairs(h) do own[k] = v end
    local ctx = { req = req, status = s, headers = own, body = text }
    hooks.run("response", ctx)
    s, h, text = ctx.status, ctx.headers, ctx.body
  end
  return s, h, text, route.name
end

return M
