-- /bookings (API.md "Bookings"). Owners see and cancel their own bookings;
-- another user's booking is 404. Admins see all (?event_id=) and may cancel any.
local problem = require "evently.problem"
local validate = require "web.validate"
local auth = require "web.auth"
local paging = require "web.paging"
local bookings = require "domain.bookings"
local events = require "domain.events"
local json = require "evently.json"

local function booking_id(req)
  local id = math.tointeger(tonumber(req.params.id))
  if not id or id < 1 or tostring(id) ~= req.params.id then
    problem.raise(404, "not-found", "no such booking")
  end
  return id
end

local REFUSED = {
  ["not-found"] = { 404, "not-found", "no such event" },
  ["not-on-sale"] = { 409, "not-on-sale", "the event is not on sale (draft, cancelled, outside its sales window or past)" },
  ["too-many"] = { 422, "validation", "quantity is above the event's max_per_booking" },
}

return function(app, base)
  app.post(base .. "/bookings", function(req)
    local user = auth.user(req)
    local v = validate.new(req.json)
    local event_id = v:integer("event_id", { required = true, min = 1 })
    local quantity = v:integer("quantity", { required = true, min = 1, max = 1000 })
    local entry_id = v:integer("waitlist_entry_id", { min = 1 })
    v:check()
    if entry_id then
      local booking, why, entry = bookings.convert(entry_id, user.id, event_id, quantity)
      if booking then
        events.changed(event_id)
        return 201, booking, { Location = base .. "/bookings/" .. booking.id }
      end
      if why == "wrong-quantity" then
        return problem.response(422, "validation", "quantity must match the waitlist offer",
          { errors = { { field = "quantity", message = "must be " .. entry.quantity } } })
      end
      if why == "no-offer" then
        return problem.response(409, "no-offer", "there is no open offer for this waitlist entry")
      end
      return problem.response(503, "unavailable", "cannot book now")
    end
    local booking, why, ev = bookings.create(event_id, user.id, quantity)
    if booking then
      events.changed(event_id)
      return 201, booking, { Location = base .. "/bookings/" .. booking.id }
    end
    if why == "sold-out" then
      return problem.response(409, "sold-out", "not enough tickets left", { available = ev.available })
    end
    local r = REFUSED[why]
    if r then
      local extra = why == "too-many" and { errors = { { field = "quantity",
        message = "must be <= " .. ev.max_per_booking } } } or nil
      return problem.response(r[1], r[2], r[3], extra)
    end
    return problem.response(503, "unavailable", "cannot book now")
  end, "bookings.create")

  app.get(base .. "/bookings", function(req)
    local user = auth.user(req)
    local page, size = paging.read(req)
    local owner, event_id = user.id, nil
    if user.role == "admin" then
      owner = nil
      if req.query.event_id then
        event_id = math.tointeger(tonumber(req.query.event_id))
        if not event_id then
          problem.raise(422, "validation", "event_id must be an integer",
            { errors = { { field = "event_id", message = "must be an integer" } } })
        end
      end
    end
    local rows, total = bookings.list(owner, event_id, page, size)
    if not rows then return problem.response(503, "unavailable", "cannot list bookings now") end
    return { items = json.array(rows), page = page, size = size, total = total }
  end, "bookings.list")

  app.get(base .. "/bookings/:id", function(req)
    local user = auth.user(req)
    local owner = user.role ~= "admin" and user.id or nil
    local b, err = bookings.get(booking_id(req), owner)
    if err then return problem.response(503, "unavailable", "cannot read the booking now") end
    if not b then return problem.response(404, "not-found", "no such booking") end
    return b
  end, "bookings.show")

  app.delete(base .. "/bookings/:id", function(req)
    local user = auth.user(req)
    local owner = user.role ~= "admin" and user.id or nil
    local ok, b, err, changed = pcall(bookings.cancel, booking_id(req), owner)
    if not ok or err then return problem.response(503, "unavailable", "cannot cancel now") end
    if not b then return problem.response(404, "not-found", "no such booking") end
    if changed then events.changed(b.event_id) end
    return b
  end, "bookings.cancel")
end
