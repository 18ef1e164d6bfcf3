-- /bookings (API.md "Bookings"). Owners see and cancel their own bookings;
-- another user's booking is 404. Admins see all (?event_id=) and may cancel any.
local problem = require "evently.problem"
local validate = require "web.validate"
local auth = require "web.auth"
local params = require "web.params"
local paging = require "web.paging"
local bookings = require "domain.bookings"
local events = require "domain.events"
local json = require "evently.json"
local db = require "evently.db"
local idempotency = require "domain.idempotency"
local rules = require "rules.booking"
local early = require "evently.early"

local function booking_id(req) return params.id(req, "booking") end
local limit_exceeded = require("domain.ticket_limit").problem

local REFUSED = {
  ["not-found"] = { 404, "not-found", "no such event" },
  ["not-on-sale"] = { 409, "not-on-sale",
    "the event is not on sale (draft, cancelled, outside its sales window or past)" },
  ["too-many"] = { 422, "validation", "quantity is above the event's max_per_booking" },
}

return function(app, base)
  -- The hot path of a sold-out flash sale: answered from the worker's gate
  -- before any validation or encoding (the body is the one the full path
  -- would build for a sold-out event).
  local SOLD_OUT = json.encode(problem.document(409, "sold-out", "not enough tickets left", { available = 0 }))
  local SOLD_OUT_HEADERS = { ["Content-Type"] = "application/problem+json" }
  local seats = require "domain.seats"

  -- A plain take of integers (no waitlist conversion): what the gate can answer.
  local function plain_take(doc)
    return type(doc) == "table" and math.type(doc.event_id) == "integer"
      and math.type(doc.quantity) == "integer" and doc.quantity >= 1 and doc.waitlist_entry_id == nil
  end

  -- The answer to a booking request, as status, body, headers. tx (optional)
  -- and after_take make the stored idempotent answer part of the booking's
  -- own transaction.
  local function book(req, user, tx, after_take, idempotency_key)
    local v = validate.new(req.json)
    local event_id = v:integer("event_id", { required = true, min = 1 })
    local quantity = v:integer("quantity", { required = true, min = 1, max = 1000 })
    local entry_id = v:integer("waitlist_entry_id", { min = 1 })
    v:check()
    if entry_id then
      local booking, why, entry = bookings.convert(entry_id, user.id, event_id, quantity, tx, after_take)
      if booking then
        if not tx then events.changed(event_id) end
        return 201, booking, { Location = base .. "/bookings/" .. booking.id }
      end
      if why == "wrong-quantity" then
        return problem.response(422, "validation", "quantity must match the waitlist offer",
          { errors = { { field = "quantity", message = "must be " .. entry.quantity } } })
      end
      if why == "limit-exceeded" then return limit_exceeded(entry) end
      if why == "no-offer" then
        return problem.response(409, "no-offer", "there is no open offer for this waitlist entry")
      end
      return problem.unavailable("book", why)
    end
    local booking, why, ev = bookings.create(event_id, user.id, quantity, tx, after_take, idempotency_key)
    if booking then
      if not tx then events.changed(event_id) end -- else after the commit: never cache an uncommitted read
      return 201, booking, { Location = base .. "/bookings/" .. booking.id }
    end
    if why == "sold-out" then
      return problem.response(409, "sold-out", "not enough tickets left", { available = ev.available })
    end
    if why == "limit-exceeded" then return limit_exceeded(ev) end
    if why == "busy" then
      local st, doc, h = problem.response(503, "busy", "not booked: the event is too busy right now; try again")
      h["Retry-After"] = "1"
      return st, doc, h
    end
    if why == "unknown" then
      return problem.response(504, "outcome-unknown",
        "the booking may or may not have been made; GET /bookings shows it")
    end
    local r = REFUSED[why]
    if r then
      local extra = why == "too-many" and { errors = { { field = "quantity",
        message = "must be <= " .. ev.max_per_booking } } } or nil
      return problem.response(r[1], r[2], r[3], extra)
    end
    return problem.unavailable("book", why)
  end

  local function book_once(req, user, key)
    -- Sold out and a key never seen: answered as without a key, and nothing is
    -- written (a 409 books nothing, so no repeat has anything to replay). A
    -- flood of fresh keys costs one indexed read each, not two writes. A key
    -- seen before goes on to its replay: a 201 lost on the way stays a 201.
    local doc = req.json
    if plain_take(doc) and seats.gate_closed(doc.event_id, doc.quantity) then
      local known, err = idempotency.known(user.id, key)
      if known == nil then return problem.unavailable("book", err) end
      if not known then return 409, SOLD_OUT, SOLD_OUT_HEADERS end
    end
    local hash = idempotency.hash(req)
    local state, status, body = idempotency.claim(user.id, key, hash)
    if not state then return problem.unavailable("book", status) end -- status holds the error
    if state == "mismatch" then
      return problem.response(422, "idempotency-key-reused", "this Idempotency-Key was used with another request")
    end
    if state == "in-flight" then
      return problem.response(409, "idempotency-in-flight", "a request with this Idempotency-Key is still in progress")
    end
    if state == "replay" then
      local h = { ["Idempotent-Replayed"] = "true",
                  ["Content-Type"] = status >= 400 and "application/problem+json" or "application/json" }
      if status == 201 then h.Location = base .. "/bookings/" .. body.id end
      return status, body, h
    end
    -- ours: the booking and its stored answer commit together. Coalesced, the
    -- batch statement itself stores a granted take's answer (domain/seats.lua)
    if rules.coalesce and not (type(doc) == "table" and doc.waitlist_entry_id ~= nil) then
      local ok, s, b, h = pcall(book, req, user, nil, nil, key)
      if not ok then
        idempotency.release(user.id, key)
        if problem.is(s) then error(s, 0) end -- validation: answered, and the key is free again
        return problem.unavailable("book", s)
      end
      if s == 201 then return s, b, h end -- stored with the booking
      if s < 500 then
        idempotency.store(db, user.id, key, s, b)
      elseif s ~= 504 then -- not booked (busy, unavailable): the key is free again
        idempotency.release(user.id, key)
      end -- 504: it may be booked; if so, its answer was stored with it, so the key stays claimed
      return s, b, h
    end
    local ok, s, b, h = pcall(db.transaction, function(tx)
      return book(req, user, tx, function(row)
        local stored, err = idempotency.store(tx, user.id, key, 201, row)
        if not stored then error(err, 0) end
      end)
    end)
    if not ok or s == nil then -- raised, or the transaction itself failed (nil, err)
      idempotency.release(user.id, key)
      if not ok and problem.is(s) then error(s, 0) end -- validation: answered, and the key is free again
      return problem.unavailable("book", ok and b or s)
    end
    if s == 201 then
      events.changed(b.event_id)
    elseif s < 500 then
      idempotency.store(db, user.id, key, s, b)
    else
      idempotency.release(user.id, key)
    end
    return s, b, h
  end


  -- Hotter still: the worker answers the same in C before any Lua runs, when
  -- the caller's token was resolved here lately (web/auth.lua feeds the C
  -- token cache) and the C gate is closed (core/early.h has every condition).
  -- Whatever it leaves (unknown tokens, Idempotency-Key, waitlist
  -- conversions, odd bodies) comes here, where the check below still holds.
  early.refuse_when_closed{
    method = "POST", path = base .. "/bookings", route = "bookings.create",
    pool = "seats", key_field = "event_id", quantity_field = "quantity",
    unless_fields = { "waitlist_entry_id" }, unless_headers = { "idempotency-key" },
    status = 409, content_type = SOLD_OUT_HEADERS["Content-Type"], body = SOLD_OUT,
  }

  app.post(base .. "/bookings", function(req)
    local user = auth.user(req)
    local key = req.headers["idempotency-key"]
    if key == nil and plain_take(req.json) and seats.gate_closed_here(req.json.event_id, req.json.quantity) then
      return 409, SOLD_OUT, SOLD_OUT_HEADERS
    end
    if key == nil then return book(req, user) end
    if not idempotency.valid(key) then
      return problem.response(422, "validation", "Idempotency-Key must be 1 to 255 printable ASCII characters",
        { errors = { { field = "Idempotency-Key", message = "must be 1..255 printable ASCII" } } })
    end
    return book_once(req, user, key)
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
    if not rows then return problem.unavailable("list bookings", total) end
    return { items = json.array(rows), page = page, size = size, total = total }
  end, "bookings.list")

  app.get(base .. "/bookings/:id", function(req)
    local user = auth.user(req)
    local owner = user.role ~= "admin" and user.id or nil
    local b, err = bookings.get(booking_id(req), owner)
    if err then return problem.unavailable("read the booking", err) end
    if not b then return problem.response(404, "not-found", "no such booking") end
    return b
  end, "bookings.show")

  app.delete(base .. "/bookings/:id", function(req)
    local user = auth.user(req)
    local owner = user.role ~= "admin" and user.id or nil
    local b, err, changed = bookings.cancel(booking_id(req), owner) -- a raised error: evently.app answers
    if err then return problem.unavailable("cancel", err) end
    if not b then return problem.response(404, "not-found", "no such booking") end
    if changed then events.reopened(b.event_id) end
    return b
  end, "bookings.cancel")
end
