-- /events/{id}/waitlist, /waitlist (API.md "Waitlist"), and the sweeper that
-- expires offers.
local problem = require "evently.problem"
local json = require "evently.json"
local time = require "evently.time"
local log = require "evently.log"
local validate = require "web.validate"
local auth = require "web.auth"
local paging = require "web.paging"
local waitlist = require "domain.waitlist"
local events = require "domain.events"
local rules = require "rules.waitlist"

local path_id = require("web.params").id

local REFUSED = {
  ["not-found"] = { 404, "not-found", "no such event" },
  ["not-on-sale"] = { 409, "not-on-sale", "the event is not on sale" },
  ["tickets-available"] = { 409, "tickets-available", "tickets are on sale now: book them instead" },
}

-- Expired offers are swept by every worker; SKIP LOCKED gives each to one.
local function sweep()
  for _ = 1, 20 do
    local ok, touched = pcall(waitlist.expire_due, 100)
    if not ok then
      log.warn("waitlist sweep: %s", tostring(touched))
      return
    end
    if #touched == 0 then return end
    for _, event_id in ipairs(touched) do events.reopened(event_id) end
  end
end

return function(app, base)
  if require("evently.runtime").worker().slot >= 0 then
    time.every(rules.sweep_seconds, sweep)
  end

  app.post(base .. "/events/:id/waitlist", function(req)
    local user = auth.user(req)
    local event_id = path_id(req, "event")
    local v = validate.new(req.json)
    local quantity = v:integer("quantity", { required = true, min = 1, max = 1000 })
    v:check()
    local entry, why, ev = waitlist.join(event_id, user.id, quantity) -- a raised error: evently.app answers
    if entry then return 201, entry end
    if why == "limit-exceeded" then return require("domain.ticket_limit").problem(ev) end
    if why == "too-many" then
      return problem.response(422, "validation", "quantity is above the event's max_per_booking",
        { errors = { { field = "quantity", message = "must be <= " .. ev.max_per_booking } } })
    end
    local r = REFUSED[why]
    if r then
      return problem.response(r[1], r[2], r[3], why == "tickets-available" and { available = ev.available } or nil)
    end
    return problem.unavailable("join the waitlist", why)
  end, "waitlist.join")

  app.get(base .. "/waitlist", function(req)
    local user = auth.user(req)
    local page, size = paging.read(req)
    local rows, total = waitlist.list(user.id, page, size)
    if not rows then return problem.unavailable("read the waitlist", total) end
    return { items = json.array(rows), page = page, size = size, total = total }
  end, "waitlist.list")

  app.delete(base .. "/waitlist/:id", function(req)
    local user = auth.user(req)
    -- a raised error is evently.app's to answer
    local done, event_id = waitlist.leave(path_id(req, "waitlist entry"), user.id)
    if done == nil then return problem.unavailable("leave the waitlist", event_id) end -- event_id holds the error
    if not done then return problem.response(404, "not-found", "no such waitlist entry") end
    events.reopened(event_id)
    return 204
  end, "waitlist.leave")
end
