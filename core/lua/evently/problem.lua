--- evently.problem: RFC 9457 problem documents.
--   problem.response(status, kind, detail?, extra?) -> status, body, headers
--     kind: short stable name ("sold-out"); type becomes https://evently.dev/problems/<kind>
--     extra: more members (errors = {{field=, message=}}, available = 3, ...)
--   problem.raise(status, kind, detail?, extra?)   raises it; evently.app answers it
--   problem.is(err) -> true when err was raised by problem.raise
--   problem.unavailable(doing, err?) -> status, body, headers
--     503 unavailable, "cannot <doing> now", Retry-After: 1: the answer for a
--     dependency that failed (database, Redis). err, when given, is logged
--     with the request, never shown to the client.
--   problem.from_err(err, request_id?) -> status, body, headers
--     the one map from an error a handler raised to an answer (evently.app
--     uses it): a problem.raise as that problem; a binding's error value
--     ({kind=, message=}: database, Redis, Kafka) as 503 unavailable; the Lua
--     heap full as 503 busy; anything else (a bug) as 500 internal, which
--     names request_id so the log line can be found.
local log = require "evently.log"

local M = {}

local titles = {
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict", [410] = "Gone",
  [413] = "Content Too Large", [415] = "Unsupported Media Type", [422] = "Unprocessable Content",
  [429] = "Too Many Requests", [500] = "Internal Server Error", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}
M.titles = titles
M.base = "https://evently.dev/problems/"

local RAISED = {}

function M.document(status, kind, detail, extra)
  local doc = { type = M.base .. kind, title = titles[status] or "Error", status = status, detail = detail }
  if extra then for k, v in pairs(extra) do doc[k] = v end end
  return doc
end

function M.response(status, kind, detail, extra)
  local headers = { ["Content-Type"] = "application/problem+json" }
  if status == 401 then headers["WWW-Authenticate"] = "Bearer" end -- RFC 9110 11.6.1
  return status, M.document(status, kind, detail, extra), headers
end

function M.raise(status, kind, detail, extra)
  error(setmetatable({ status = status, kind = kind, detail = detail, extra = extra }, RAISED), 2)
end

function M.is(err)
  return getmetatable(err) == RAISED
end

local function retry_soon(status, body, headers)
  headers["Retry-After"] = "1"
  return status, body, headers
end

function M.unavailable(doing, err)
  if err ~= nil then log.warn("cannot %s: %s", doing, tostring(err)) end
  return retry_soon(M.response(503, "unavailable", "cannot " .. doing .. " now"))
end

-- A binding's error value: a table with a string kind and message.
local function dependency_error(err)
  return type(err) == "table" and type(err.kind) == "string" and type(err.message) == "string"
end

function M.from_err(err, request_id)
  if M.is(err) then return M.response(err.status, err.kind, err.detail, err.extra) end
  if err == "not enough memory" then -- the worker's Lua heap is at lua_memory_max
    return retry_soon(M.response(503, "busy", "the server is short of memory; retry"))
  end
  if dependency_error(err) then return M.unavailable("answer", err) end
  return M.response(500, "internal", "the server failed; the request id helps find out why",
    { request_id = request_id })
end

return M
