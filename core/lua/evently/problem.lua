--- evently.problem: RFC 9457 problem documents.
--   problem.response(status, kind, detail?, extra?) -> status, body, headers
--     kind: short stable name ("sold-out"); type becomes https://evently.dev/problems/<kind>
--     extra: more members (errors = {{field=, message=}}, available = 3, ...)
--   problem.raise(status, kind, detail?, extra?)   raises it; evently.app answers it
--   problem.is(err) -> true when err was raised by problem.raise
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

return M
