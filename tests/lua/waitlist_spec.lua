-- #pg: a waitlist conversion racing the offer of its own entry (found by the
-- soak: a 503 "cannot book now"). The conversion read the entry, then ran its
-- UPDATE in a new snapshot. When the offer committed in between, the UPDATE
-- converted the entry, but the hold it confirmed was the one read before the
-- offer: none. Here the race is made certain: the conversion runs in a
-- transaction whose read of the entry lets the offer commit before it goes on.
local db = require "evently.db"
local time = require "evently.time"
local bookings = require "domain.bookings"
local waitlist = require "domain.waitlist"
local support = dofile("tests/lua/support.lua")

describe("domain.bookings.convert #pg", function()
  local tag = tostring(math.floor(time.now() * 1000))

  local function user(n)
    return assert(db.value([[INSERT INTO users (email, name, password_hash) VALUES ($1, 'W', 'x') RETURNING id]],
      ("waitlist-%s-%d@example.com"):format(tag, n)))
  end

  it("books the offer that committed while it ran, with that offer's hold", function()
    local owner = user(1)
    -- one seat free, and one entry waiting for it
    local event_id = assert(db.value([[INSERT INTO events (name, venue, starts_at, capacity, available, price_cents,
        status, max_per_booking) VALUES ('W', 'V', now() + interval '1 day', 1, 1, 100, 'published', 4)
      RETURNING id]]))
    local entry = assert(db.value([[INSERT INTO waitlist (event_id, user_id, quantity) VALUES ($1, $2, 1)
      RETURNING id]], event_id, owner))

    local offered, go, committed = false, false, false
    time.after(0, function()
      assert(db.transaction(function(tx)
        assert.are.equal(1, #waitlist.offer(tx, event_id))
        offered = true
        assert(support.wait_until(2, function() return go end), "the conversion never read the entry")
        return true
      end))
      committed = true
    end)
    assert(support.wait_until(2, function() return offered end), "the offer never ran")
    local booking, why = db.transaction(function(tx)
      -- tx, but the read of the entry lets the offer commit right after it
      local q = setmetatable({ one = function(sql, ...)
        local row, err = tx.one(sql, ...)
        if sql:find("FROM waitlist WHERE id = $1 AND user_id = $2", 1, true) and not go then
          go = true
          assert(support.wait_until(2, function() return committed end), "the offer never committed")
        end
        return row, err
      end }, { __index = tx })
      return bookings.convert(entry, owner, event_id, 1, q)
    end)
    assert.is_true(committed)
    assert.is_table(booking, "conversion failed: " .. tostring(why))
    assert.are.equal(owner, booking.user_id)
    assert.is_nil(booking.hold_id) -- the hold is the domain's, not the answer's
    local row = db.one([[SELECT w.status, h.state FROM waitlist w JOIN inventory_holds h ON h.id = w.hold_id
      WHERE w.id = $1]], entry)
    assert.are.same({ status = "converted", state = "confirmed" }, { status = row.status, state = row.state })
    assert.are.equal(0, db.value("SELECT available FROM events WHERE id = $1", event_id))
  end)
end)
