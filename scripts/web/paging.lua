--- paging: ?page=1&size=20 (size at most 100), as API.md "Conventions" says.
local validate = require "web.validate"

local M = {}

function M.read(req)
  local v = validate.new({ page = tonumber(req.query.page or "1") or req.query.page,
                           size = tonumber(req.query.size or "20") or req.query.size })
  local page = v:integer("page", { min = 1, max = 1000000 })
  local size = v:integer("size", { min = 1, max = 100 })
  v:check()
  return page, size
end

return M
