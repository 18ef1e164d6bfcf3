--- evently.stream: consumers of the domain events in the outbox.
--   stream.consume{ topic = "booking-cancelled", group = "waitlist", handler = fn,
--                   retries = 5, batch = 50 }
--     handler(msg) runs in its own coroutine with every platform API; msg is
--     { id, topic, type, key (the event id), payload (table), created_at }.
--     Returning normally acknowledges; raising (or returning nil, err) retries
--     with backoff; after `retries` failures the message goes to the dead
--     letters (dead_letters table, the <topic>.dlq of the Kafka mode) with its
--     error and the consumer goes on. Delivery is at least once, in outbox
--     order per topic: handlers deduplicate by msg.id.
--   Topics: booking-confirmed, booking-cancelled, waitlist-notification,
--   event-cancelled, analytics-events (everything).
-- This is the in-process mode (no EVENTLY_KAFKA_BROKERS): the outbox table is
-- the log and stream_offsets holds each group's position. One worker of one
-- instance holds a group's position row at a time (FOR UPDATE SKIP LOCKED),
-- like a Kafka partition owned by one member of the group; the others poll.
local db = require "evently.db"
local time = require "evently.time"
local log = require "evently.log"
local runtime = require "evently.runtime"

local M = {}
local POLL = 0.2

local TOPICS = { ["booking-confirmed"] = true, ["booking-cancelled"] = true, ["waitlist-notification"] = true,
  ["event-cancelled"] = true, ["analytics-events"] = true }
M.TOPICS = TOPICS

local function deliver(c, row)
  local msg = { id = row.id, topic = c.topic, type = row.event_type, key = row.aggregate_id,
    payload = row.payload, created_at = row.created_at }
  local ok, v, err = pcall(c.handler, msg)
  if ok and (v ~= nil or err == nil) then return true end
  return false, ok and tostring(err) or tostring(v)
end

-- One pass: lock the group's position, hand the next messages over in order,
-- move the position. Returns how many were handled (0: nothing new, or another
-- worker holds the group).
local function pass(c)
  local handled = 0
  local ok, err = pcall(db.transaction, function(tx)
    assert(tx.query([[INSERT INTO stream_offsets (consumer_group, topic) VALUES ($1, $2)
      ON CONFLICT DO NOTHING]], c.group, c.topic))
    local pos = tx.one([[SELECT last_txid, last_id FROM stream_offsets WHERE consumer_group = $1 AND topic = $2
      FOR UPDATE SKIP LOCKED]], c.group, c.topic)
    if not pos then return end
    local rows = assert(tx.query([[SELECT id, txid, event_type, aggregate_id, payload, created_at FROM outbox
      WHERE (txid, id) > ($1, $2) AND txid < txid_snapshot_xmin(txid_current_snapshot())
        AND outbox_topic_matches($3, event_type)
      ORDER BY txid, id LIMIT $4]], pos.last_txid, pos.last_id, c.topic, c.batch))
    local last, last_txid = pos.last_id, pos.last_txid
    for _, row in ipairs(rows) do
      local attempt, done, why = 0, false, nil
      while not done do
        attempt = attempt + 1
        done, why = deliver(c, row)
        if not done then
          if attempt > c.retries then
            log.warn("stream %s/%s: message %d failed %d times, dead-lettered: %s", c.group, c.topic, row.id, attempt, why)
            assert(tx.query([[INSERT INTO dead_letters (consumer_group, topic, outbox_id, attempts, error)
              VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING]], c.group, c.topic, row.id, attempt, why))
            break
          end
          time.sleep(math.min(0.05 * 2 ^ (attempt - 1), 2))
        end
      end
      last, last_txid = row.id, row.txid
      handled = handled + 1
    end
    if last ~= pos.last_id then
      assert(tx.query([[UPDATE stream_offsets SET last_txid = $3, last_id = $4, updated_at = now()
        WHERE consumer_group = $1 AND topic = $2]], c.group, c.topic, last_txid, last))
    end
  end)
  if not ok then log.warn("stream %s/%s: %s", c.group, c.topic, tostring(err)) end
  return handled
end

local function loop(c)
  while true do
    local n = pass(c)
    if n < c.batch then time.sleep(POLL) end
  end
end

function M.consume(spec)
  if type(spec) ~= "table" or not TOPICS[spec.topic] then error("stream.consume: unknown topic", 2) end
  if type(spec.group) ~= "string" or spec.group == "" then error("stream.consume: group required", 2) end
  if type(spec.handler) ~= "function" then error("stream.consume: handler must be a function", 2) end
  local c = { topic = spec.topic, group = spec.group, handler = spec.handler,
    retries = spec.retries or 5, batch = spec.batch or 50 }
  -- consumers run in workers (and in `evently lua`/`test`), not while checking scripts
  if runtime.worker().slot >= 0 or spec.now then time.after(0, loop, c) end
  return c
end

--- Lag of a group on a topic: outbox rows it has not handled yet.
function M.lag(group, topic)
  return db.value([[SELECT count(*) FROM outbox o WHERE outbox_topic_matches($2, o.event_type)
    AND (o.txid, o.id) > coalesce((SELECT (last_txid, last_id) FROM stream_offsets
                                   WHERE consumer_group = $1 AND topic = $2), (0::bigint, 0::bigint))]],
    group, topic)
end

return M
