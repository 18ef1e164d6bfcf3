--- evently.stream: consumers of the domain events in the outbox, the same
-- for scripts whether Kafka runs or not.
--   stream.consume{ topic = "booking-cancelled", group = "waitlist", handler = fn,
--                   retries = 5, batch = 200 }
--     handler(msg) runs in its own coroutine with every platform API; msg is
--     { id, topic, type, key (the event id), payload (table), created_at }.
--     Returning normally acknowledges; raising (or returning nil, err) retries
--     with backoff; after `retries` failures the message is dead-lettered with
--     its error and the consumer goes on. A failure that is a dependency's,
--     not the message's, is waited out instead (backoff up to 30 s, never
--     dead-lettered, the group's later messages wait behind it): a database
--     or Redis error value of kind timeout, closed or unavailable, or any
--     error the handler wraps as stream.later(err) (a mail server that defers). Delivery is at least once, in outbox
--     order per event. Kafka mode records handled msg.ids per group
--     (stream_processed, one statement per batch of up to 200) and skips a
--     message the relay published twice; in
--     process the group's position moves with each batch, so only a crash
--     mid-batch hands messages over again. In process, `batch` is how many
--     outbox rows (of any topic) a pass reads; its topic's among them are
--     handed over.
--     With transactional = true the handler is handler(msg, tx): it runs in
--     the transaction that records msg.id as handled, so effects it writes
--     through tx happen exactly once.
--     lease = 10 (in process): seconds a worker holds the group without
--     renewing; it renews every third of that, also while a handler runs (a
--     mail run for thousands of holders keeps the group, so no second worker
--     sends the same mail).
--     batch_handler = fn(msgs) (not with transactional): the messages of a
--     batch are handed over together first (e.g. to send them in one round
--     trip); returning normally acknowledges them all; raising or returning
--     nil, err hands each to handler(msg) instead, with its retries and dead
--     letters.
--   stream.retry_dead{ids =, group =}   marks dead letters (in process: the
--     dead_letters table) to be handed to their group's handler again on its
--     next pass: deleted once handled, unmarked with the new error otherwise.
--     ids: a list of dead letter ids, or group: all of a group's. -> marked | nil, err
--   stream.drop_dead{ids =, group =}   deletes dead letters. -> dropped | nil, err
--   stream.relay()          starts the outbox relay (Kafka mode; no-op otherwise)
--   stream.metrics_text()   consumer lag lines for /metrics
--   stream.lag(group, topic) the topic's messages the group has not handled,
--     counted among the first 100,000 outbox rows past its position (a bound
--     on the cost of a scrape: beyond that, a lower bound)
--   stream.prune{outbox_seconds =, dead_letters_seconds =, batch = 1000}
--     deletes up to `batch` outbox rows older than outbox_seconds that no one
--     needs any more (past every in-process group's position; published, in
--     Kafka mode; no dead letter points at them) and up to `batch` dead letters
--     older than dead_letters_seconds. Returns {outbox = n, dead_letters = n}
--     or nil, err. For the app's retention job (scripts/domain/retention.lua).
--   Topics: booking-confirmed, booking-cancelled, waitlist-notification,
--   event-cancelled, analytics-events (everything).
--
-- Kafka mode (EVENTLY_KAFKA_BROKERS): the relay publishes outbox rows to
-- their topic and to analytics-events, keyed by event id, in (txid, id)
-- order, and marks them published only after every delivery report; one
-- relay runs at a time across all instances (an advisory lock). Consumers are
-- Kafka consumer groups (each worker one member per group, subscribed to all
-- the group's topics; `retries` is the largest asked for in the group); dead
-- letters go to <topic>.dlq.
-- In-process mode: the outbox table is the log and stream_offsets holds each
-- group's position. One worker of one instance holds a group's position at a
-- time through a lease renewed as it goes (like a Kafka partition owned by
-- one member of the group), without holding a database connection while its
-- handlers run; dead letters go to the dead_letters table. The position
-- moves past other topics' rows too, so a pass reads only what is new.
-- Both wake up on NOTIFY evently_outbox (a trigger on the outbox), at most
-- every 50 ms per consumer, and poll once a second besides, in case a
-- notification was missed.
local db = require "evently.db"
local json = require "evently.json"
local time = require "evently.time"
local log = require "evently.log"
local sync = require "evently.sync"
local runtime = require "evently.runtime"
local kafka = require "evently.kafka"

local M = {}
local POLL = 1.0
local RELAY_BATCH = 5000
local RELAY_LOCK = 72010   -- pg advisory lock key of the one relay

-- The topics; which event types go to which is Postgres' outbox_topic()
-- (migration 0012), used by the relay and the in-process consumers alike.
local TOPICS = { ["booking-confirmed"] = true, ["booking-cancelled"] = true, ["waitlist-notification"] = true,
  ["event-cancelled"] = true, ["analytics-events"] = true }
M.TOPICS = TOPICS

-- ---------------------------------------------------------------- wake-ups

-- One event per generation: every napping consumer waits on the current one,
-- a NOTIFY sets it and the next nap starts a new one. A NOTIFY that came
-- while a loop was busy (its pass already running) must not be lost: the
-- loop notes the count before its pass and naps only if none came since, or
-- rows committed then would wait for the next NOTIFY or the poll.
local current
local listening = false
local notified = 0

-- Dead letters marked for another try: told by NOTIFY evently_dead_letters
-- (from whichever worker marked them), looked for besides every RETRY_CHECK s.
local retry_told = 0
local RETRY_CHECK = 30

local function wake_all()
  notified = notified + 1
  local ev = current
  current = nil
  if ev then ev:set() end
end

-- The NOTIFY count now: a loop takes it before its pass.
local function mark()
  if not listening then
    listening = true
    db.listen("evently_outbox", wake_all)
    db.listen("evently_dead_letters", function() retry_told = retry_told + 1; wake_all() end)
  end
  return notified
end

-- Waits for the next NOTIFY evently_outbox or `timeout` seconds, unless one
-- came since mark() gave `seen`.
local function nap(timeout, seen)
  if notified ~= seen then return end
  current = current or sync.event()
  current:wait(timeout)
end

-- ---------------------------------------------------------------- handlers

-- A failure to wait out rather than count towards the dead letters.
local LATER = { __tostring = function(l) return tostring(l.err) end }
function M.later(err) return setmetatable({ err = err }, LATER) end
local TRANSIENT = { timeout = true, closed = true, unavailable = true }
local function is_later(e)
  return getmetatable(e) == LATER
    or (type(e) == "table" and TRANSIENT[e.kind] == true and type(e.message) == "string")
end

-- Waits out a dependency's failure: the next try after `backoff`, doubled.
local LATER_MAX = 30
local function wait_out(c, msg, why, backoff)
  log.warn("stream %s/%s: message %d waits for a dependency (%s); again in %.1f s", c.group, c.topic, msg.id,
    why, backoff)
  time.sleep(backoff)
  return math.min(backoff * 2, LATER_MAX)
end

-- Retries until the database answers: an outage is not the handler's fault
-- and must not push messages towards the dead letters.
local function persist(what, fn)
  local backoff = 0.1
  while true do
    local ok, v = pcall(fn)
    if ok then return v end
    log.warn("stream: %s: %s; again in %.1f s", what, tostring(v), backoff)
    time.sleep(backoff); backoff = math.min(backoff * 2, 5)
  end
end

-- A batch through c.batch_handler: true when it took them all.
local function handle_together(c, msgs)
  if not c.batch_handler then return false end
  local ok, v, err = pcall(c.batch_handler, msgs)
  if ok and (v ~= nil or err == nil) then return true end
  log.info("stream %s/%s: a batch of %d failed together (%s); one by one instead", c.group, c.topic, #msgs,
    tostring(ok and err or v))
  return false
end

-- true; or false, why and whether to wait it out (is_later)
local function deliver(c, msg)
  local ok, v, err = pcall(c.handler, msg)
  if ok and (v ~= nil or err == nil) then return true end
  local e = ok and err or v
  return false, tostring(e), is_later(e)
end

-- A transactional handler writes its effects in the transaction that records
-- the message as handled: its effects happen exactly once.
local function deliver_tx(c, msg)
  local ok, err = pcall(db.transaction, function(tx)
    local fresh, ierr = tx.one([[INSERT INTO stream_processed (consumer_group, topic, message_id)
      VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1 AS x]], c.group, c.topic, msg.id)
    if ierr then error(ierr, 0) end
    if not fresh then return end
    local v, herr = c.handler(msg, tx)
    if v == nil and herr ~= nil then error(herr, 0) end
  end, { retries = 3 })
  if ok then return true end
  return false, tostring(err), is_later(err)
end

-- ---------------------------------------------------------------- in-process mode

-- A group's position row is owned by one worker at a time through a lease
-- (owner, lease_until), taken and renewed by single statements: no
-- connection is held while handlers run, so a worker's consumers never sit on
-- the pool that requests need. The lease is renewed with every move of the
-- position and between messages of a long batch; a worker that dies leaves
-- the group to the next one after at most its lease (c.lease, default LEASE
-- seconds). While handlers run, a keeper renews it every third of that.
local LEASE = 10
local ME = string.format("%d:%s", runtime.worker().pid or 0, require("evently.crypto").random_token(8))
local owners = 0
local function owner_of(c) -- one per consumer: two consumers of a group here are two members
  if not c.owner then owners = owners + 1; c.owner = ME .. ":" .. owners end
  return c.owner
end

local function claim(c)
  return db.one([[INSERT INTO stream_offsets (consumer_group, topic, owner, lease_until)
      VALUES ($1, $2, $3, now() + make_interval(secs => $4))
    ON CONFLICT (consumer_group, topic) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
      WHERE stream_offsets.owner IS NOT DISTINCT FROM EXCLUDED.owner OR stream_offsets.lease_until < now()
    RETURNING last_txid, last_id]], c.group, c.topic, owner_of(c), c.lease)
end

-- Moves the position (and renews the lease) only while the lease is ours;
-- false when another worker took the group over (it hands the batch over
-- again: at least once).
local function advance(c, txid, id)
  local row, err = db.one([[UPDATE stream_offsets SET last_txid = coalesce($4, last_txid),
      last_id = coalesce($5, last_id), lease_until = now() + make_interval(secs => $6), updated_at = now()
    WHERE consumer_group = $1 AND topic = $2 AND owner = $3 RETURNING 1 AS ok]],
    c.group, c.topic, owner_of(c), txid, id, c.lease)
  if err then error(err, 0) end
  return row ~= nil
end

-- Renews the lease alone, while handlers run (the position moves after).
local function renew(c)
  local row, err = db.one([[UPDATE stream_offsets SET lease_until = now() + make_interval(secs => $4)
    WHERE consumer_group = $1 AND topic = $2 AND owner = $3 RETURNING 1 AS ok]],
    c.group, c.topic, owner_of(c), c.lease)
  if not row then
    log.warn("stream %s/%s: lease not renewed while handling: %s", c.group, c.topic, tostring(err or "taken over"))
  end
end

-- Keeps the lease while a pass hands messages over; closing it stops.
local function keeper(c)
  local every = time.every(c.lease / 3, renew, c)
  return setmetatable({}, { __close = function() every:cancel() end })
end

local function run_in_process(c, msg)
  local tries, backoff = 0, 0.05
  while true do
    local done, why, later
    if c.transactional then done, why, later = deliver_tx(c, msg) else done, why, later = deliver(c, msg) end
    if done then return end
    if later then
      backoff = wait_out(c, msg, why, backoff)
    else
      tries = tries + 1
      if tries > c.retries then
        log.warn("stream %s/%s: message %d failed %d times, dead-lettered: %s", c.group, c.topic, msg.id, tries, why)
        persist("dead letter", function()
          assert(db.query([[INSERT INTO dead_letters (consumer_group, topic, outbox_id, attempts, error)
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING]], c.group, c.topic, msg.id, tries, why))
        end)
        return
      end
      time.sleep(math.min(0.05 * 2 ^ (tries - 1), 2))
    end
  end
end

-- A pass reads the next c.batch outbox rows after the group's position in
-- (txid, id) order, of any topic, hands over the rows of its own topic among
-- them, and moves the position past all it read: a consumer of a rare topic
-- does not read the same tail of other topics' rows again on every pass, so
-- a pass costs the rows written since the last one, however long the outbox.
local SPAN = [[WITH span AS MATERIALIZED (
    SELECT id, txid, event_type, aggregate_id, payload, created_at FROM outbox
    WHERE (txid, id) > ($1, $2) AND txid < txid_snapshot_xmin(txid_current_snapshot())
    ORDER BY txid, id LIMIT $4),
  tail AS (SELECT txid, id, (SELECT count(*) FROM span) AS n FROM span ORDER BY txid DESC, id DESC LIMIT 1),
  hits AS (SELECT * FROM span WHERE outbox_topic_matches($3, event_type))
  SELECT tail.txid AS tail_txid, tail.id AS tail_id, tail.n AS scanned,
         h.id, h.txid, h.event_type, h.aggregate_id, h.payload, h.created_at
  FROM tail LEFT JOIN hits h ON true
  ORDER BY h.txid, h.id]]
-- A woken consumer passes at most this often: a NOTIFY per booking batch
-- (hundreds a second on a hot event) must not mean a query per consumer each.
local MIN_GAP = 0.05
-- A position that moved past other topics' rows only is written at most this
-- often (one handed over is written at once): losing it costs a re-read.
local SAVE_EVERY = 1.0

-- The group's position as this worker holds it (c.pos), taken with the lease;
-- false when another worker holds the group.
local function hold(c)
  if c.pos then return true end
  local pos, err = claim(c)
  if not pos then
    if err then error(err, 0) end
    return false
  end
  c.pos, c.saved_at, c.dirty = { pos.last_txid, pos.last_id }, time.monotonic(), false
  return true
end

-- Writes c.pos and renews the lease; raises when the lease was lost.
local function save(c)
  if not advance(c, c.pos[1], c.pos[2]) then error("lease lost", 0) end
  c.saved_at, c.dirty = time.monotonic(), false
end

-- One pass. Returns how many messages were handled and whether more are
-- waiting, or nil when another worker holds the group.
-- Dead letters of this group marked for another try: each goes to the
-- handler once more (no retries of its own), then is deleted or unmarked.
local RETRIES_DUE = [[SELECT d.id AS dead_id, o.id, o.event_type, o.aggregate_id, o.payload, o.created_at
  FROM dead_letters d JOIN outbox o ON o.id = d.outbox_id
  WHERE d.consumer_group = $1 AND d.topic = $2 AND d.retry_requested_at IS NOT NULL
  ORDER BY d.id LIMIT 100]]
local function retry_dead(c)
  local now = time.monotonic()
  if c.retry_seen == retry_told and now < (c.retry_at or 0) then return end
  c.retry_seen, c.retry_at = retry_told, now + RETRY_CHECK
  local rows = assert(db.query(RETRIES_DUE, c.group, c.topic))
  if #rows == 0 then return end
  local _ <close> = keeper(c)
  for _, r in ipairs(rows) do
    local msg = { id = r.id, topic = c.topic, type = r.event_type, key = r.aggregate_id, payload = r.payload,
      created_at = r.created_at }
    local done, why
    if c.transactional then done, why = deliver_tx(c, msg) else done, why = deliver(c, msg) end
    if done then
      assert(db.query("DELETE FROM dead_letters WHERE id = $1", r.dead_id))
      log.info("stream %s/%s: dead letter %d (message %d) handled on retry", c.group, c.topic, r.dead_id, r.id)
    else
      assert(db.query([[UPDATE dead_letters SET retry_requested_at = NULL, attempts = attempts + 1, error = $2
        WHERE id = $1]], r.dead_id, why))
    end
  end
end

local function pass(c)
  local handled, more, elsewhere = 0, false, false
  local ok, err = pcall(function()
    if not hold(c) then elsewhere = true; return end
    retry_dead(c)
    local rows = assert(db.query(SPAN, c.pos[1], c.pos[2], c.topic, c.batch))
    if #rows == 0 then -- nothing new; the lease still wants renewing
      if time.monotonic() - c.saved_at > c.lease / 3 then save(c) end
      return
    end
    local hits = rows[1].id ~= db.null and #rows or 0
    local msgs = {}
    for i = 1, hits do
      local row = rows[i]
      msgs[i] = { id = row.id, topic = c.topic, type = row.event_type, key = row.aggregate_id,
        payload = row.payload, created_at = row.created_at }
    end
    local _ <close> = hits > 0 and keeper(c) or nil
    local together = hits > 0 and handle_together(c, msgs)
    for i = 1, hits do
      if not together then
        if time.monotonic() - c.saved_at > c.lease / 3 then save(c) end -- a long batch keeps its lease
        run_in_process(c, msgs[i])
      end
      handled = handled + 1
      c.pos, c.dirty = { rows[i].txid, rows[i].id }, true
    end
    c.pos, c.dirty = { rows[1].tail_txid, rows[1].tail_id }, true -- past every row read
    more = rows[1].scanned == c.batch
    if c.dirty and (handled > 0 or time.monotonic() - c.saved_at > SAVE_EVERY) then save(c) end
  end)
  if not ok then
    c.pos = nil -- the database's position is the truth again
    log.warn("stream %s/%s: %s", c.group, c.topic, tostring(err))
  end
  if elsewhere then return nil end
  return handled, more
end

local function loop(c)
  while true do
    local started, seen = time.monotonic(), mark()
    local n, more = pass(c)
    if n == nil then
      time.sleep(POLL) -- another worker owns the group: check now and then, not on every NOTIFY
    elseif not more then
      nap(POLL, seen)
      local since = time.monotonic() - started
      if since < MIN_GAP then time.sleep(MIN_GAP - since) end
    end
  end
end

-- ---------------------------------------------------------------- Kafka mode

-- One Kafka consumer per group and worker, subscribed to every topic the
-- group consumes here (one group member, not one per topic); messages are
-- handed to the consumer registered for their topic.
local kafka_groups = {}

-- A batch: decode, drop what the group already handled (one query), and
-- after the handlers record the rest as handled (one statement).
local function kafka_before(g)
  return function(batch)
    local ids, in_batch = {}, {}
    for _, k in ipairs(batch) do
      local c = g.by_topic[k.topic]
      local ok, m = pcall(json.decode, k.value)
      if c and ok and type(m) == "table" and math.type(m.id) == "integer" then
        local once = k.topic .. "/" .. m.id
        if in_batch[once] then
          k.skip = true -- published twice and both copies came in this batch
        else
          in_batch[once] = true
          k.stream = { id = m.id, topic = k.topic, type = m.type, key = m.key, payload = m.payload,
            created_at = m.created_at }
          ids[#ids + 1] = m.id
        end
      elseif not c then
        k.skip = true
      end -- else: not an outbox message; the handler raises and it is dead-lettered
    end
    local done = persist("dedup check", function()
      if #ids == 0 then return {} end
      local rows = assert(db.query([[SELECT topic || '/' || message_id AS once FROM stream_processed
        WHERE consumer_group = $1 AND message_id = ANY($2::bigint[])]], g.group, "{" .. table.concat(ids, ",") .. "}"))
      local set = {}
      for _, r in ipairs(rows) do set[r.once] = true end
      return set
    end)
    local together = {} -- consumer -> its messages of this batch, for batch_handler
    for _, k in ipairs(batch) do
      if k.stream and done[k.topic .. "/" .. k.stream.id] then k.skip = true end
      local c = g.by_topic[k.topic]
      if k.stream and not k.skip and c and c.batch_handler then
        together[c] = together[c] or { msgs = {}, ks = {} }
        table.insert(together[c].msgs, k.stream)
        table.insert(together[c].ks, k)
      end
    end
    for c, t in pairs(together) do
      if handle_together(c, t.msgs) then
        for _, k in ipairs(t.ks) do k.together = true end
      end
    end
  end
end

local function kafka_after(g)
  return function(batch)
    local topics, ids = {}, {}
    for _, k in ipairs(batch) do
      if k.stream and not k.skip and not g.by_topic[k.topic].transactional then
        topics[#topics + 1] = '"' .. k.topic .. '"'
        ids[#ids + 1] = k.stream.id
      end
    end
    if #ids == 0 then return end
    persist("dedup record", function()
      assert(db.query([[INSERT INTO stream_processed (consumer_group, topic, message_id)
        SELECT $1, t, id FROM unnest($2::text[], $3::bigint[]) AS u(t, id) ON CONFLICT DO NOTHING]],
        g.group, "{" .. table.concat(topics, ",") .. "}", "{" .. table.concat(ids, ",") .. "}"))
    end)
  end
end

local function kafka_dispatch(g)
  return function(k)
    if not k.stream then error("not an outbox message: " .. tostring(k.value):sub(1, 200), 0) end
    if k.together then return true end -- its batch_handler took it
    local c = g.by_topic[k.topic]
    local backoff = 0.05
    while true do
      local ok, why, later
      if c.transactional then ok, why, later = deliver_tx(c, k.stream) else ok, why, later = deliver(c, k.stream) end
      if ok then return true end
      if not later then error(why, 0) end -- counted by evently.kafka's retries
      backoff = wait_out(c, k.stream, why, backoff)
    end
  end
end

local function kafka_member(c, now)
  local g = kafka_groups[c.group]
  if not g then
    g = { group = c.group, topics = {}, by_topic = {}, retries = c.retries }
    kafka_groups[c.group] = g
    if runtime.worker().slot >= 0 or now then
      -- on the loop's next turn: the boot has registered every topic of the group by then
      time.after(0, function()
        kafka.consume { topic = g.topics, group = c.group, handler = kafka_dispatch(g),
          retries = g.retries, batch = 200, before_batch = kafka_before(g), after_batch = kafka_after(g),
          now = true }
      end)
    end
  end
  if g.by_topic[c.topic] then error("stream.consume: group " .. c.group .. " already consumes " .. c.topic, 3) end
  g.topics[#g.topics + 1] = c.topic
  g.by_topic[c.topic] = c
  g.retries = math.max(g.retries, c.retries)
end

local function relay_pass()
  local published = 0
  local ok, err = pcall(db.transaction, function(tx)
    if not tx.one("SELECT 1 AS x WHERE pg_try_advisory_xact_lock($1)", RELAY_LOCK) then return end
    -- the message text is built by Postgres: the payload is never decoded and encoded again here
    local rows = assert(tx.query([[SELECT id, event_type, outbox_topic(event_type) AS topic, aggregate_id::text AS key,
        json_build_object('id', id, 'type', event_type, 'key', aggregate_id, 'payload', payload,
                          'created_at', created_at)::text AS value
      FROM outbox
      WHERE published_at IS NULL AND txid < txid_snapshot_xmin(txid_current_snapshot())
      ORDER BY txid, id LIMIT $1]], RELAY_BATCH))
    if #rows == 0 then return end
    local msgs, ids = {}, {}
    for _, row in ipairs(rows) do
      local headers = { ["event-id"] = tostring(row.id), type = row.event_type }
      if row.topic ~= db.null then
        msgs[#msgs + 1] = { topic = row.topic, key = row.key, value = row.value, headers = headers }
      end
      msgs[#msgs + 1] = { topic = "analytics-events", key = row.key, value = row.value, headers = headers }
      ids[#ids + 1] = row.id
    end
    local sent, perr = kafka.produce_batch(msgs, 40)
    if not sent then error("publishing to Kafka: " .. tostring(perr), 0) end
    assert(tx.query("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
      "{" .. table.concat(ids, ",") .. "}"))
    published = #rows
  end)
  if not ok then
    log.warn("stream relay: %s", tostring(err))
    return 0, true
  end
  return published
end

local function relay_loop()
  local backoff = 0.2
  while true do
    local seen = mark()
    local n, failed = relay_pass()
    if failed then
      time.sleep(backoff); backoff = math.min(backoff * 2, 5)
    else
      backoff = 0.2
      if n > 0 then runtime.count("evently_outbox_published_total", n) end
      if n < RELAY_BATCH then nap(POLL, seen) end
    end
  end
end

local relaying = false
function M.relay()
  if relaying or not kafka.enabled() or runtime.worker().slot < 0 then return end
  relaying = true
  time.after(0, relay_loop)
end

-- Old rows no one needs, a batch at a time (SKIP LOCKED: instances share it).
local PRUNE_OUTBOX = [[DELETE FROM outbox WHERE id = ANY(ARRAY(
  SELECT o.id FROM outbox o
  WHERE o.created_at < now() - make_interval(secs => $1)
    AND ($3 = false OR o.published_at IS NOT NULL)
    AND NOT EXISTS (SELECT 1 FROM stream_offsets s WHERE (o.txid, o.id) > (s.last_txid, s.last_id))
    AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.outbox_id = o.id)
  ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED))]]
local PRUNE_DEAD = [[DELETE FROM dead_letters WHERE id = ANY(ARRAY(
  SELECT id FROM dead_letters WHERE created_at < now() - make_interval(secs => $1)
  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED))]]

function M.prune(opts)
  local batch = opts.batch or 1000
  local dead, err = db.query(PRUNE_DEAD, opts.dead_letters_seconds, batch)
  if not dead then return nil, err end
  local out
  out, err = db.query(PRUNE_OUTBOX, opts.outbox_seconds, batch, kafka.enabled())
  if not out then return nil, err end
  return { outbox = out.affected, dead_letters = dead.affected }
end

-- ids or group, checked: the WHERE clause and its parameter.
local function which_dead(opts, who)
  if type(opts) ~= "table" or (opts.ids == nil) == (opts.group == nil) then
    error(who .. ": ids or group (one of them) expected", 3)
  end
  if opts.group then return "consumer_group = $1", tostring(opts.group) end
  local ids = {}
  for i, id in ipairs(opts.ids) do
    if math.type(id) ~= "integer" then error(who .. ": ids must be integers", 3) end
    ids[i] = id
  end
  return "id = ANY($1::bigint[])", "{" .. table.concat(ids, ",") .. "}"
end

function M.retry_dead(opts)
  local where, arg = which_dead(opts, "stream.retry_dead")
  local res, err = db.query("UPDATE dead_letters SET retry_requested_at = now() WHERE " .. where, arg)
  if not res then return nil, err end
  if res.affected > 0 then db.query("NOTIFY evently_dead_letters") end
  return res.affected
end

function M.drop_dead(opts)
  local where, arg = which_dead(opts, "stream.drop_dead")
  local res, err = db.query("DELETE FROM dead_letters WHERE " .. where, arg)
  if not res then return nil, err end
  return res.affected
end

-- Handled-message records only matter for redeliveries, which come soon.
local cleaning = false
local function clean_records_hourly()
  if cleaning or runtime.worker().slot < 0 then return end
  cleaning = true
  time.every(3600, function()
    pcall(db.query, "DELETE FROM stream_processed WHERE processed_at < now() - interval '7 days'")
  end)
end

-- ---------------------------------------------------------------- both

local consumers = {}

function M.consume(spec)
  if type(spec) ~= "table" or not TOPICS[spec.topic] then error("stream.consume: unknown topic", 2) end
  if type(spec.group) ~= "string" or spec.group == "" then error("stream.consume: group required", 2) end
  if type(spec.handler) ~= "function" then error("stream.consume: handler must be a function", 2) end
  if spec.lease ~= nil and (type(spec.lease) ~= "number" or spec.lease <= 0) then
    error("stream.consume: lease must be a number of seconds > 0", 2)
  end
  if spec.batch_handler ~= nil and (type(spec.batch_handler) ~= "function" or spec.transactional) then
    error("stream.consume: batch_handler must be a function, and not with transactional", 2)
  end
  local c = { topic = spec.topic, group = spec.group, handler = spec.handler, batch_handler = spec.batch_handler,
    retries = spec.retries or 5, batch = spec.batch or 200, transactional = spec.transactional == true,
    lease = spec.lease or LEASE }
  consumers[#consumers + 1] = c
  clean_records_hourly()
  if kafka.enabled() then
    kafka_member(c, spec.now)
  elseif runtime.worker().slot >= 0 or spec.now then
    -- consumers run in workers (and in `evently lua`/`test`), not while checking scripts
    time.after(0, loop, c)
  end
  return c
end

--- Lag of a group on a topic in in-process mode: outbox rows it has not handled yet.
-- Lag reads at most LAG_SCAN outbox rows past the position (through the
-- (txid, id) index): a scrape costs the same however far behind a group is or
-- however long the outbox; beyond that it reports a lower bound.
M.LAG_SCAN = 100000
M.LAG_SQL = [[SELECT count(*) FILTER (WHERE outbox_topic_matches($3, s.event_type)) FROM (
    SELECT o.event_type FROM outbox o WHERE (o.txid, o.id) > ($1, $2)
    ORDER BY o.txid, o.id LIMIT $4) s]]
function M.lag(group, topic)
  -- the position first: compared as parameters, (txid, id) > ($1, $2) is an
  -- index range scan; against a subquery's row it would scan the whole outbox
  local pos, err = db.one("SELECT last_txid, last_id FROM stream_offsets WHERE consumer_group = $1 AND topic = $2",
    group, topic)
  if err then return nil, err end
  return db.value(M.LAG_SQL, pos and pos.last_txid or 0, pos and pos.last_id or 0, topic, M.LAG_SCAN)
end

-- Dead letters per group and topic; like the lag, at most LAG_SCAN rows are
-- read, so a scrape costs the same however many there are.
local DEAD_SQL = [[SELECT consumer_group, topic, count(*) AS n FROM (
    SELECT consumer_group, topic FROM dead_letters LIMIT $1) d GROUP BY consumer_group, topic]]
-- The oldest row the relay has not published (the partial index on
-- unpublished ids: one index entry read).
local OLDEST_SQL = [[SELECT extract(epoch FROM now() - created_at)::float8 AS age FROM outbox
  WHERE published_at IS NULL ORDER BY id LIMIT 1]]

local function label(v) return (tostring(v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" })) end

local function inprocess_lines(out)
  out[#out + 1] = "# HELP evently_consumer_lag Messages a consumer group has not handled yet."
  out[#out + 1] = "# TYPE evently_consumer_lag gauge"
  for _, c in ipairs(consumers) do
    local ok, n = pcall(M.lag, c.group, c.topic)
    if ok and n then
      out[#out + 1] = string.format('evently_consumer_lag{group="%s",topic="%s"} %d', c.group, c.topic, n)
    end
  end
  out[#out + 1] = "# HELP evently_dead_letters Messages a consumer group gave up on, kept for a retry."
  out[#out + 1] = "# TYPE evently_dead_letters gauge"
  local seen = {}
  for _, c in ipairs(consumers) do seen[c.group .. "\0" .. c.topic] = { c.group, c.topic, 0 } end
  local ok, rows = pcall(db.query, DEAD_SQL, M.LAG_SCAN)
  if not (ok and rows) then return end
  for _, r in ipairs(rows) do seen[r.consumer_group .. "\0" .. r.topic] = { r.consumer_group, r.topic, r.n } end
  local keys = {}
  for k in pairs(seen) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local g = seen[k]
    out[#out + 1] = string.format('evently_dead_letters{group="%s",topic="%s"} %d', label(g[1]), label(g[2]), g[3])
  end
end

--- Stream lines for /metrics. In-process mode: each consumer's lag and dead
-- letters, read from the database. Kafka mode: evently.kafka reports each
-- worker's lag share through runtime.gauge (rendered with the process
-- figures); here the age of the oldest row the relay has not published.
function M.metrics_text()
  if #consumers == 0 and not kafka.enabled() then return "" end
  local out = {}
  if kafka.enabled() then
    local ok, row, err = pcall(db.one, OLDEST_SQL)
    if not ok or err then return "" end -- no figure rather than a false one
    out[1] = "# HELP evently_outbox_oldest_unpublished_seconds Age of the oldest outbox row not yet in Kafka (0: none)."
    out[2] = "# TYPE evently_outbox_oldest_unpublished_seconds gauge"
    out[3] = string.format("evently_outbox_oldest_unpublished_seconds %.3f", row and row.age or 0)
  else
    inprocess_lines(out)
  end
  return table.concat(out, "\n") .. "\n"
end

return M
