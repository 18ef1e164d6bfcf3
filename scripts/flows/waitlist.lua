--- flows.waitlist: freed seats go to the waitlist. Cancellations already
-- offer their seats in their own transaction; this consumer is the backstop
-- for seats freed any other way (an admin resize, a cancellation whose offer
-- step failed), and does nothing when no one waits or nothing is free.
local db = require "evently.db"
local stream = require "evently.stream"
local waitlist = require "domain.waitlist"

local M = {}

local function offer(msg)
  local event_id = msg.payload and msg.payload.event_id
  if not event_id then return true end
  db.transaction(function(tx) waitlist.offer(tx, event_id) end, { retries = 3 })
  return true
end

function M.start()
  stream.consume { topic = "booking-cancelled", group = "waitlist", handler = offer }
end

return M
