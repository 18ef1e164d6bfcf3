--- params: path parameters. An id that is not a positive integer names no
-- resource, so it is a 404 like any unknown id.
local problem = require "evently.problem"

local M = {}

function M.id(req, what)
  local id = math.tointeger(tonumber(req.params.id))
  if not id or id < 1 or tostring(id) ~= req.params.id then
    problem.raise(404, "not-found", "no such " .. what)
  end
  return id
end

return M
