-- /notifications (API.md "Notifications"): a user's in-app notifications.
local problem = require "evently.problem"
local db = require "evently.db"
local json = require "evently.json"
local auth = require "web.auth"
local paging = require "web.paging"
local pages = require "domain.pages"

return function(app, base)
  app.get(base .. "/notifications", function(req)
    local user = auth.user(req)
    local page, size = paging.read(req)
    local rows, total = pages.fetch("id, type, payload, created_at, read_at", "notifications WHERE user_id = $1",
      { user.id }, "id DESC", page, size)
    if not rows then return problem.unavailable("read notifications", total) end
    return { items = json.array(rows), page = page, size = size, total = total }
  end, "notifications.list")

  app.post(base .. "/notifications/:id/read", function(req)
    local user = auth.user(req)
    local id = require("web.params").id(req, "notification")
    local row, err = db.one([[UPDATE notifications SET read_at = coalesce(read_at, now())
        WHERE id = $1 AND user_id = $2 RETURNING id, type, payload, created_at, read_at]], id, user.id)
    if err then return problem.unavailable("update the notification", err) end
    if not row then return problem.response(404, "not-found", "no such notification") end
    return row
  end, "notifications.read")
end
