-- /events (API.md "Events"): public reads, admin writes.
local problem = require "evently.problem"
local json = require "evently.json"
local validate = require "web.validate"
local auth = require "web.auth"
local params = require "web.params"
local paging = require "web.paging"
local events = require "domain.events"

local STATUSES = { "draft", "published", "cancelled" }

-- Reads every writable field present in the body; required ones on create.
local function read_fields(body, creating)
  local v = validate.new(body)
  local f = {
    name = v:string("name", { required = creating, min = 1, max = 200 }),
    description = v:string("description", { max = 10000 }),
    venue = v:string("venue", { required = creating, min = 1, max = 200 }),
    starts_at = v:timestamp("starts_at", { required = creating }),
    ends_at = v:timestamp("ends_at", {}),
    capacity = v:integer("capacity", { required = creating, min = 1, max = 10000000 }),
    price_cents = v:integer("price_cents", { required = creating, min = 0, max = 100000000000 }),
    currency = v:string("currency", { pattern = "^%u%u%u$", pattern_message = "must be an ISO 4217 code like EUR" }),
    max_per_booking = v:integer("max_per_booking", { min = 1, max = 1000 }),
    status = v:enum("status", STATUSES),
    sales_start = v:timestamp("sales_start", {}),
    sales_end = v:timestamp("sales_end", {}),
  }
  v:check()
  return f
end

local function event_id(req) return params.id(req, "event") end

-- A check constraint that the field checks cannot see (ends before it starts).
local function write_failed(err)
  if type(err) == "table" and err.sqlstate == "23514" then
    return problem.response(422, "validation", "the fields contradict each other",
      { errors = { { field = err.constraint or "event", message = "violates " .. tostring(err.constraint) } } })
  end
  return problem.unavailable("save the event", err)
end

local function optional_user(req)
  if not req.headers.authorization then return nil end
  local ok, user = pcall(auth.user, req)
  return ok and user or nil
end

return function(app, base)
  app.get(base .. "/events", function(req)
    local page, size = paging.read(req)
    local user = optional_user(req)
    local filter = { page = page, size = size, admin = user and user.role == "admin" }
    local v = validate.new({ q = req.query.q, from = req.query.from, to = req.query.to, status = req.query.status })
    filter.q = v:string("q", { max = 200 })
    filter.from = v:timestamp("from", {})
    filter.to = v:timestamp("to", {})
    filter.status = v:enum("status", STATUSES)
    v:check()
    local result, err = events.list(filter)
    if not result then return problem.unavailable("list events", err) end
    json.array(result.items) -- an empty page is [] even after a trip through the cache
    return result
  end, "events.list")

  app.get(base .. "/events/:id", function(req)
    local id = event_id(req)
    local user = optional_user(req)
    local ev, err
    if user and user.role == "admin" then ev, err = events.get(id) else ev, err = events.get_public(id) end
    if err then return problem.unavailable("read the event", err) end
    if not ev then return problem.response(404, "not-found", "no such event") end
    return ev
  end, "events.show")

  app.post(base .. "/events", function(req)
    auth.admin(req)
    local ev, err = events.create(read_fields(req.json, true))
    if not ev then return write_failed(err) end
    return 201, ev, { Location = base .. "/events/" .. ev.id }
  end, "events.create")

  app.patch(base .. "/events/:id", function(req)
    auth.admin(req)
    local id = event_id(req)
    local ev, err, current = events.update(id, read_fields(req.json, false))
    if err == "capacity-below-sold" then
      local sold = current.capacity - current.available
      return problem.response(409, "capacity-below-sold", "capacity cannot go below the " .. sold .. " tickets sold",
        { sold = sold })
    end
    if err then return write_failed(err) end
    if not ev then return problem.response(404, "not-found", "no such event") end
    return ev
  end, "events.update")

  app.delete(base .. "/events/:id", function(req)
    auth.admin(req)
    local ev, err = events.cancel(event_id(req))
    if err then return problem.unavailable("cancel the event", err) end
    if not ev then return problem.response(404, "not-found", "no such event") end
    return ev
  end, "events.cancel")
end
