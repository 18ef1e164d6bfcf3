--- pages: one page of a list and its total, as API.md's lists answer them.
-- The rows come from an index walk of just the page (ORDER BY ... LIMIT);
-- the total from its own count(*), which an index-only scan answers, and
-- which is skipped when the first page is not full. A count(*) OVER () in
-- the page's query would fetch every matching row to count it: a user with
-- thousands of bookings would pay for all of them on every page.
local db = require "evently.db"

local M = {}

--- from: "bookings WHERE user_id = $1" (its parameters in args); order:
-- "id DESC"; count (optional): a query of the same parameters that answers
-- the total from a kept counter instead of count(*). Returns rows, total | nil, err.
function M.fetch(select, from, args, order, page, size, count)
  local n = #args
  local all = { table.unpack(args, 1, n) }
  all[n + 1], all[n + 2] = size, (page - 1) * size
  local rows, err = db.query(("SELECT %s FROM %s ORDER BY %s LIMIT $%d OFFSET $%d"):format(select, from, order,
    n + 1, n + 2), table.unpack(all, 1, n + 2))
  if not rows then return nil, err end
  if page == 1 and #rows < size then return rows, #rows end
  local total
  total, err = db.value(count or "SELECT count(*) FROM " .. from, table.unpack(args, 1, n))
  if not total then return nil, err end
  return rows, total
end

return M
