-- Test plugin for the event-stream suite (tests/integration/test_stream.py).
--  * group "ledger": every booking.confirmed / booking.cancelled, written to
--    the ledger table in the handler's transaction (transactional consumer),
--    with no unique constraint: a message handled twice shows as two rows.
--  * topic "probe" (raw Kafka): POST /probe/{value} produces; the consumer
--    records values in probe_seen and fails for ever on "poison" (-> DLQ).
local db = require "evently.db"
local kafka = require "evently.kafka"
local stream = require "evently.stream"
local time = require "evently.time"

local ready = false
local function schema()
  db.transaction(function(tx)
    assert(tx.query("SELECT pg_advisory_xact_lock(4242)"))
    assert(tx.query([[CREATE TABLE IF NOT EXISTS ledger (message_id bigint, type text, event_id bigint,
      booking_id bigint, at timestamptz DEFAULT now())]]))
    assert(tx.query("CREATE TABLE IF NOT EXISTS probe_seen (value text, at timestamptz DEFAULT now())"))
  end)
  ready = true
end

local function record(msg, tx)
  if not ready then error("schema not ready yet", 0) end
  assert(tx.query("INSERT INTO ledger (message_id, type, event_id, booking_id) VALUES ($1, $2, $3, $4)",
    msg.id, msg.type, msg.key, msg.payload.booking_id))
  return true
end

return {
  version = "1.0",
  priority = 10,
  routes = function(app)
    time.after(0, schema)
    stream.consume { topic = "booking-confirmed", group = "ledger", handler = record, transactional = true }
    stream.consume { topic = "booking-cancelled", group = "ledger", handler = record, transactional = true }
    if kafka.enabled() then
      kafka.consume { topic = "probe", group = "probe", retries = 2, handler = function(m)
        if m.value == "poison" then error("poisoned on purpose", 0) end
        assert(db.query("INSERT INTO probe_seen (value) VALUES ($1)", m.value))
      end }
      app.post("/probe/:value", function(req)
        local partition, offset = kafka.produce("probe", "k", req.params.value, { origin = "test" })
        return { partition = partition, offset = offset }
      end)
    end
  end,
}
