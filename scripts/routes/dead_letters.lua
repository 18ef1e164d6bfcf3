-- /admin/dead-letters: what a consumer gave up on, and sending it again
-- (in process; with Kafka the dead letters are the <topic>.dlq topics).
local problem = require "evently.problem"
local json = require "evently.json"
local stream = require "evently.stream"
local validate = require "web.validate"
local auth = require "web.auth"
local paging = require "web.paging"
local pages = require "domain.pages"

local MAX_IDS = 1000

return function(app, base)
  app.get(base .. "/admin/dead-letters", function(req)
    auth.admin(req)
    local page, size = paging.read(req)
    local group = req.query.group
    local rows, total = pages.fetch([[d.id, d.consumer_group, d.topic, d.outbox_id, o.event_type AS type,
        d.attempts, d.error, d.created_at, d.retry_requested_at]],
      "dead_letters d JOIN outbox o ON o.id = d.outbox_id" .. (group and " WHERE d.consumer_group = $1" or ""),
      { group }, "d.id DESC", page, size)
    if not rows then return problem.unavailable("read the dead letters", total) end
    return { items = json.array(rows), page = page, size = size, total = total }
  end, "dead_letters.list")

  app.post(base .. "/admin/dead-letters/retry", function(req)
    auth.admin(req)
    local body = req.json
    local v = validate.new(body)
    local group = v:string("group", { min = 1, max = 200 })
    local ids = body.ids
    if ids ~= nil then
      if type(ids) ~= "table" or #ids == 0 or #ids > MAX_IDS then
        v:fail("ids", "must be a list of 1 to " .. MAX_IDS .. " dead letter ids")
      else
        for _, id in ipairs(ids) do
          if math.type(id) ~= "integer" or id < 1 then v:fail("ids", "must hold positive integers only"); break end
        end
      end
    end
    if (ids == nil) == (group == nil) then v:fail("body", "give ids or group (one of them)") end
    v:check()
    local marked, err = stream.retry_dead(ids and { ids = ids } or { group = group })
    if not marked then return problem.unavailable("mark the dead letters", err) end
    return 202, { marked = marked }
  end, "dead_letters.retry")
end
