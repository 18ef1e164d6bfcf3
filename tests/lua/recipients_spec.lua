-- #pg: who a domain event concerns (scripts/flows/recipients.lua), and that
-- finding an event's cancelled holders reads an index, not every notification.
local db = require "evently.db"
local time = require "evently.time"
local recipients = require "flows.recipients"

describe("flows.recipients #pg", function()
  local tag = tostring(math.floor(time.now() * 1000))
  local event_id = tonumber(tag:sub(-9)) -- an id no other spec's rows use
  local users = {}

  setup(function()
    for i = 1, 3 do
      users[i] = assert(db.value([[INSERT INTO users (email, name, password_hash)
        VALUES ($1, 'R', 'x') RETURNING id]], "recipients-" .. tag .. "-" .. i .. "@example.com"))
    end
    -- two rows for users[2] (told twice), one for users[1], and rows of other kinds
    assert(db.query([[INSERT INTO notifications (user_id, type, payload)
      SELECT u, 'event.cancelled', jsonb_build_object('event_id', $2::bigint) FROM unnest($1::bigint[]) u]],
      "{" .. users[2] .. "," .. users[1] .. "," .. users[2] .. "}", event_id))
    assert(db.query([[INSERT INTO notifications (user_id, type, payload)
      VALUES ($1, 'booking.confirmed', jsonb_build_object('event_id', $2::bigint)),
             ($1, 'event.cancelled', jsonb_build_object('event_id', $2::bigint + 1))]], users[3], event_id))
  end)

  it("names each holder of a cancelled event once, in order", function()
    assert.are.same({ users[1], users[2] },
      recipients.of({ type = "event.cancelled", payload = { event_id = event_id } }))
    assert.are.same({}, recipients.of({ type = "event.cancelled", payload = { event_id = event_id + 2 } }))
    assert.are.same({ 9 }, recipients.of({ type = "booking.confirmed", payload = { user_id = 9 } }))
    assert.are.same({},
      recipients.of({ type = "booking.cancelled", payload = { user_id = 9, reason = "event.cancelled" } }))
  end)

  it("reads the holders through notifications_event_cancelled_idx, not every notification", function()
    local plan = db.transaction(function(tx)
      assert(tx.query("SET LOCAL enable_seqscan = off")) -- a small table would be scanned anyway
      local rows = assert(tx.query("EXPLAIN " .. recipients.HOLDERS, tostring(event_id)))
      local lines = {}
      for i, r in ipairs(rows) do lines[i] = r["QUERY PLAN"] end
      return table.concat(lines, "\n")
    end)
    assert.truthy(plan:find("notifications_event_cancelled_idx", 1, true), plan)
  end)
end)
