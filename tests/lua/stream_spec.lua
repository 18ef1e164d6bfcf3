-- #pg: in-process consumers of the outbox.
local db = require "evently.db"
local stream = require "evently.stream"
local time = require "evently.time"

local function emit(kind, key, payload)
  assert(db.query("INSERT INTO outbox (event_type, aggregate_id, payload) VALUES ($1, $2, $3)", kind, key, payload))
end

local wait_until = dofile("tests/lua/support.lua").wait_until

describe("evently.stream #pg", function()
  local tag = tostring(math.floor(time.now() * 1000))

  it("delivers a topic's messages in order, once each, to a group", function()
    local seen = {}
    stream.consume{ topic = "booking-cancelled", group = "spec-order-" .. tag, now = true,
      handler = function(msg) if msg.payload.tag == tag then seen[#seen + 1] = msg.payload.n end end }
    for i = 1, 5 do emit("booking.cancelled", 1, { tag = tag, n = i }) end
    emit("booking.confirmed", 1, { tag = tag, n = 99 }) -- another topic
    assert.is_true(wait_until(5, function() return #seen >= 5 end))
    time.sleep(0.3) -- deliberate: time for a second delivery to show up; none may
    assert.are.same({ 1, 2, 3, 4, 5 }, seen)
    assert.are.equal(0, stream.lag("spec-order-" .. tag, "booking-cancelled"))
  end)

  it("moves past other topics' rows, so a rare topic's pass reads only what is new", function()
    local group = "spec-rare-" .. tag
    local seen = {}
    stream.consume{ topic = "event-cancelled", group = group, now = true,
      handler = function(msg) if msg.payload.rare == tag then seen[#seen + 1] = msg.payload.n end end }
    -- 2,500 rows of another topic (more than one pass reads), then one of its own
    assert(db.query([[INSERT INTO outbox (event_type, aggregate_id, payload)
      SELECT 'booking.confirmed', 1, jsonb_build_object('n', g) FROM generate_series(1, 2500) g]]))
    emit("event.cancelled", 1, { rare = tag, n = 1 }) -- not `tag`: other groups of the topic read it too
    assert.is_true(wait_until(5, function() return #seen == 1 end))
    assert.are.same({ 1 }, seen)
    -- more of the other topic only: the position still moves (within a second)
    assert(db.query([[INSERT INTO outbox (event_type, aggregate_id, payload)
      SELECT 'booking.confirmed', 1, '{}' FROM generate_series(1, 10)]]))
    local function behind()
      return db.value([[SELECT count(*) FROM outbox o, stream_offsets s
        WHERE s.consumer_group = $1 AND s.topic = 'event-cancelled'
          AND (o.txid, o.id) > (s.last_txid, s.last_id)]], group)
    end
    assert.is_true(wait_until(5, function() return behind() == 0 end), "position stayed behind: " .. tostring(behind()))
    assert.are.equal(0, stream.lag(group, "event-cancelled"))
    assert.are.same({ 1 }, seen)
  end)

  it("hands a batch to batch_handler together, and one by one to handler when the batch fails", function()
    local group = "spec-together-" .. tag
    local batches, single, fail_next = {}, {}, false
    stream.consume{ topic = "waitlist-notification", group = group, now = true,
      batch_handler = function(msgs)
        local mine = {}
        for _, m in ipairs(msgs) do if m.payload.together == tag then mine[#mine + 1] = m.payload.n end end
        if #mine == 0 then return true end
        if fail_next then fail_next = false; return nil, "the batch fails" end
        batches[#batches + 1] = mine
        return true
      end,
      handler = function(msg) if msg.payload.together == tag then single[#single + 1] = msg.payload.n end end }
    assert(db.query([[INSERT INTO outbox (event_type, aggregate_id, payload)
      SELECT 'waitlist.offered', 3, jsonb_build_object('together', $1::text, 'n', g)
      FROM generate_series(1, 5) g]], tag))
    assert.is_true(wait_until(5, function() return #batches == 1 end))
    assert.are.same({ { 1, 2, 3, 4, 5 } }, batches) -- one statement's rows: one batch
    assert.are.same({}, single)
    fail_next = true
    emit("waitlist.offered", 3, { together = tag, n = 6 })
    emit("waitlist.expired", 3, { together = tag, n = 7 })
    assert.is_true(wait_until(5, function() return #single == 2 end))
    assert.are.same({ 6, 7 }, single)
    assert.are.equal(1, #batches)
    assert.has_error(function()
      stream.consume{ topic = "waitlist-notification", group = group .. "-tx", transactional = true,
        handler = function() end, batch_handler = function() end }
    end)
  end)

  it("retries a failing handler and dead-letters a message that keeps failing, then goes on", function()
    local group = "spec-dlq-" .. tag
    local attempts, after = {}, {}
    stream.consume{ topic = "event-cancelled", group = group, retries = 2, now = true,
      handler = function(msg)
        if msg.payload.tag ~= tag then return true end
        attempts[msg.payload.n] = (attempts[msg.payload.n] or 0) + 1
        if msg.payload.n == 1 then error("always fails") end
        if msg.payload.n == 2 and attempts[2] == 1 then error("fails once") end
        after[#after + 1] = msg.payload.n
        return true
      end }
    emit("event.cancelled", 7, { tag = tag, n = 1 })
    emit("event.cancelled", 7, { tag = tag, n = 2 })
    emit("event.cancelled", 7, { tag = tag, n = 3 })
    assert.is_true(wait_until(8, function() return #after >= 2 end))
    assert.are.same({ 2, 3 }, after)
    assert.are.equal(3, attempts[1])   -- first try + 2 retries
    assert.are.equal(2, attempts[2])
    local dead = assert(db.one("SELECT attempts, error FROM dead_letters WHERE consumer_group = $1", group))
    assert.are.equal(3, dead.attempts)
    assert.truthy(dead.error:find("always fails", 1, true))
  end)

  it("does not skip a message whose transaction commits after a later one", function()
    local group = "spec-gap-" .. tag
    local seen = {}
    stream.consume{ topic = "waitlist-notification", group = group, now = true,
      handler = function(msg) if msg.payload.tag == tag then seen[#seen + 1] = msg.payload.n end end }
    local core = require "evently.db.core"
    local slow = assert(core.acquire())
    assert(slow:query("BEGIN", 0))
    assert(slow:query("INSERT INTO outbox (event_type, aggregate_id, payload) VALUES ('waitlist.offered', 3, $1)", 1,
      '{"tag":"' .. tag .. '","n":1}'))
    emit("waitlist.expired", 3, { tag = tag, n = 2 }) -- commits first, with a later id
    time.sleep(0.6) -- deliberate: the consumer's passes (NOTIFY, 1 s poll) must not hand over message 2
    assert.are.same({}, seen) -- held back while the older transaction runs
    assert(slow:query("COMMIT", 0))
    slow:release()
    assert.is_true(wait_until(5, function() return #seen >= 2 end))
    table.sort(seen)
    assert.are.same({ 1, 2 }, seen)
  end)
  it("runs a transactional handler's effects exactly once, skipping a message already recorded", function()
    local group, ttag = "spec-tx-" .. tag, tag .. "-tx"
    assert(db.query("CREATE TABLE IF NOT EXISTS spec_tx_effects (group_name text, n int)"))
    emit("booking.confirmed", 3, { tag = ttag, n = 1 })
    -- a message the group already handled (as after a redelivery) is not run again
    local second = assert(db.value([[INSERT INTO outbox (event_type, aggregate_id, payload)
      VALUES ('booking.confirmed', 3, $1) RETURNING id]], { tag = ttag, n = 2 }))
    assert(db.query("INSERT INTO stream_processed (consumer_group, topic, message_id) VALUES ($1, $2, $3)",
      group, "booking-confirmed", second))
    emit("booking.confirmed", 3, { tag = ttag, n = 3 })
    local fails = 1
    stream.consume{ topic = "booking-confirmed", group = group, transactional = true, now = true,
      handler = function(msg, tx)
        if msg.payload.tag ~= ttag then return true end
        assert(tx.query("INSERT INTO spec_tx_effects VALUES ($1, $2)", group, msg.payload.n))
        if msg.payload.n == 3 and fails > 0 then fails = fails - 1; error("rolled back with its effect") end
        return true
      end }
    local function effects()
      return assert(db.query("SELECT n FROM spec_tx_effects WHERE group_name = $1 ORDER BY n", group))
    end
    assert.is_true(wait_until(8, function() return #effects() >= 2 end))
    time.sleep(0.3) -- deliberate: time for a second effect to show up; none may
    local ns = {}
    for i, r in ipairs(effects()) do ns[i] = r.n end
    assert.are.same({ 1, 3 }, ns)
  end)
  it("leaves a group to the worker whose lease is live, takes it over once the lease lapses", function()
    local group = "spec-lease-" .. tag
    assert(db.query([[INSERT INTO stream_offsets (consumer_group, topic, owner, lease_until, last_txid, last_id)
      SELECT $1, 'booking-cancelled', 'another-worker', now() + interval '4 seconds', 0, coalesce(max(id), 0)
      FROM outbox]], group))
    assert(db.query("UPDATE stream_offsets SET last_txid = (SELECT coalesce(max(txid), 0) FROM outbox)"
      .. " WHERE consumer_group = $1", group))
    local seen = {}
    stream.consume{ topic = "booking-cancelled", group = group, now = true,
      handler = function(msg)
        if msg.payload.tag == tag and msg.payload.lease then seen[#seen + 1] = msg.payload.n end
      end }
    emit("booking.cancelled", 1, { tag = tag, lease = true, n = 1 })
    time.sleep(1.0) -- deliberate: a poll period in which the live lease must keep it from us
    assert.are.same({}, seen) -- another worker's live lease (4 s: room for a slow setup): not ours
    assert.is_true(wait_until(10, function() return #seen == 1 end))
    local row = assert(db.one(
      "SELECT owner, lease_until > now() AS live FROM stream_offsets WHERE consumer_group = $1", group))
    assert.are_not.equal("another-worker", row.owner)
    assert.is_true(row.live)
    emit("booking.cancelled", 1, { tag = tag, lease = true, n = 2 })
    assert.is_true(wait_until(5, function() return #seen == 2 end))
    assert.are.same({ 1, 2 }, seen)
  end)

  it("keeps its lease while a handler runs longer than the lease", function()
    local group = "spec-keeper-" .. tag
    local started, finished, calls = false, false, 0
    stream.consume{ topic = "booking-cancelled", group = group, now = true, lease = 0.6,
      handler = function(msg)
        if msg.payload.tag ~= tag or not msg.payload.keeper then return end
        calls = calls + 1
        started = true
        time.sleep(2.0) -- more than three leases: a mail run for many holders
        finished = true
      end }
    emit("booking.cancelled", 1, { tag = tag, keeper = true })
    assert.is_true(wait_until(5, function() return started end))
    local owner, samples = nil, 0
    while not finished do
      local row = assert(db.one(
        "SELECT owner, lease_until > now() AS live FROM stream_offsets WHERE consumer_group = $1", group))
      owner = owner or row.owner
      assert.are.equal(owner, row.owner)
      assert.is_true(row.live, "the lease lapsed while the handler ran")
      samples = samples + 1
      time.sleep(0.1)
    end
    assert.is_true(samples >= 10)
    time.sleep(0.5) -- deliberate: room for a second delivery; none may come
    assert.are.equal(1, calls)
  end)

  it("refuses a lease that is not a positive number", function()
    assert.has_error(function()
      stream.consume{ topic = "booking-cancelled", group = "spec-bad-lease", lease = 0, handler = function() end }
    end)
  end)

  it("waits out a dependency's failure instead of dead-lettering the message", function()
    local group = "spec-later-" .. tag
    local calls, handled = 0, false
    stream.consume{ topic = "booking-cancelled", group = group, now = true, retries = 1,
      handler = function(msg)
        if msg.payload.tag ~= tag or not msg.payload.later then return true end
        calls = calls + 1
        -- four times as many failures as retries allow: an outage, not the message's fault
        if calls <= 2 then return nil, stream.later("smtp deferred") end
        if calls <= 4 then return nil, { kind = "unavailable", message = "redis down" } end
        handled = true
        return true
      end }
    emit("booking.cancelled", 1, { tag = tag, later = true })
    assert.is_true(wait_until(8, function() return handled end))
    assert.are.equal(5, calls)
    assert.are.equal(0, db.value("SELECT count(*) FROM dead_letters WHERE consumer_group = $1", group))
  end)

  it("hands dead letters marked for retry to the handler again: handled ones go, failed ones stay", function()
    local group = "spec-redrive-" .. tag
    local fixed, got = false, {}
    stream.consume{ topic = "booking-cancelled", group = group, now = true, retries = 0,
      handler = function(msg)
        if msg.payload.tag ~= tag or not msg.payload.redrive then return true end
        if not fixed then error("a bug, fixed later") end
        got[#got + 1] = msg.payload.n
        return true
      end }
    emit("booking.cancelled", 1, { tag = tag, redrive = true, n = 1 })
    emit("booking.cancelled", 1, { tag = tag, redrive = true, n = 2 })
    local function dead() return db.value("SELECT count(*) FROM dead_letters WHERE consumer_group = $1", group) end
    assert.is_true(wait_until(5, function() return dead() == 2 end))
    -- retried while still broken: both stay, unmarked, with one more attempt
    assert.are.equal(2, stream.retry_dead { group = group })
    assert.is_true(wait_until(5, function()
      return db.value([[SELECT count(*) FROM dead_letters WHERE consumer_group = $1
        AND retry_requested_at IS NULL AND attempts = 2]], group) == 2
    end))
    fixed = true
    local first = db.value("SELECT min(id) FROM dead_letters WHERE consumer_group = $1", group)
    assert.are.equal(1, stream.retry_dead { ids = { first } })
    assert.is_true(wait_until(5, function() return dead() == 1 end))
    assert.are.same({ 1 }, got)
    assert.are.equal(1, stream.retry_dead { group = group })
    assert.is_true(wait_until(5, function() return dead() == 0 end))
    assert.are.same({ 1, 2 }, got)
    assert.has_error(function() stream.retry_dead { ids = { 1 }, group = group } end)
  end)

  it("counts lag among a bounded number of rows, so a scrape costs the same however far behind", function()
    assert(db.query([[INSERT INTO outbox (event_type, aggregate_id, payload)
      SELECT 'booking.confirmed', 1, '{}' FROM generate_series(1, 60)]]))
    local total = db.value("SELECT count(*) FROM outbox")
    assert.are.equal(total, stream.lag("spec-never-ran-" .. tag, "analytics-events")) -- under the bound: exact
    local bound = stream.LAG_SCAN
    stream.LAG_SCAN = 50
    local ok, n = pcall(stream.lag, "spec-never-ran-" .. tag, "analytics-events")
    stream.LAG_SCAN = bound
    assert.is_true(ok, n)
    assert.are.equal(50, n) -- a lower bound past it
    local plan = db.transaction(function(tx)
      assert(tx.query("SET LOCAL enable_seqscan = off")) -- the outbox may be small here
      local rows = assert(tx.query("EXPLAIN " .. stream.LAG_SQL, 1, 0, "analytics-events", 100))
      local lines = {}
      for i, r in ipairs(rows) do lines[i] = r["QUERY PLAN"] end
      return table.concat(lines, "\n")
    end)
    -- a range scan from the position (Index Cond), not a whole index or table read and filtered
    assert.truthy(plan:find("outbox_txid_idx", 1, true) and plan:find("Index Cond", 1, true), plan)
  end)
end)
