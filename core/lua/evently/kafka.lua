--- evently.kafka: Kafka for scripts (librdkafka underneath, one producer per
-- worker, every call yields instead of blocking).
--   kafka.enabled()                        EVENTLY_KAFKA_BROKERS is set
--   kafka.produce(topic, key, value, headers)
--       waits for the delivery report (idempotent producer, acks=all);
--       returns partition, offset; raises "kafka: ..." on failure
--   kafka.produce_batch(msgs, timeout)     msgs: {{topic, key, value, headers}, ...}
--       queued in order, one wait for all reports: true | nil, err
--   kafka.consume{ topic = "t" | {"t1", "t2"}, group = "g", handler = fn,
--                  retries = 5, dlq = true }
--       handler(msg) runs in a coroutine with every platform API; msg is
--       { topic, partition, offset, key, value, headers, timestamp }.
--       Returning normally (or anything but nil, err) acknowledges: the offset
--       is committed only then (at least once). Raising or returning nil, err
--       retries with backoff; after `retries` failures the message goes to
--       "<topic>.dlq" with headers error, attempts, source-topic,
--       source-partition, source-offset, and the consumer goes on.
--       batch = n: up to n messages already queued are taken at once;
--       before_batch(msgs) runs first (setting msg.skip = true skips a
--       message's handler) and after_batch(msgs) once all were handled, before
--       their offsets are stored (e.g. to record them in one statement).
--   kafka.lag()                            { ["group/topic"] = messages behind } of this worker,
--                                          also in /metrics as evently_consumer_lag{group, topic}
-- Consumers run in serving workers only (not in `evently check`); each
-- worker is one member of the group, so the topic's partitions are shared
-- between workers and instances, and one event's messages (keyed by event id)
-- stay in order.
local core = require "evently.kafka.core"
local time = require "evently.time"
local log = require "evently.log"
local json = require "evently.json"
local runtime = require "evently.runtime"

local M = {}

function M.enabled() return core.enabled() end

function M.produce(topic, key, value, headers)
  local ok, partition, offset = core.produce({ { topic = topic, key = key, value = value, headers = headers } })
  if not ok then error("kafka: " .. tostring(partition), 2) end
  return partition, offset
end

function M.produce_batch(msgs, timeout)
  return core.produce(msgs, timeout)
end

local members = {}   -- this worker's consumers, for lag

-- A consumer's lag per topic from librdkafka's statistics: for each
-- partition assigned here (fetch_state "active"), consumer_lag is the end of
-- the partition less the committed offset.
local function consumer_lag(consumer)
  local text = consumer:stats()
  if not text then return {} end
  local ok, stats = pcall(json.decode, text)
  if not ok or type(stats) ~= "table" or type(stats.topics) ~= "table" then return {} end
  local out = {}
  for topic, t in pairs(stats.topics) do
    for id, p in pairs(t.partitions or {}) do
      if tonumber(id) >= 0 and p.fetch_state == "active" and (p.consumer_lag or -1) >= 0 then
        out[topic] = (out[topic] or 0) + p.consumer_lag
      end
    end
  end
  return out
end

-- This worker's share of every consumer's lag, per topic it subscribes to:
-- 0 for a topic none of whose partitions is assigned here (a rebalance moved
-- them), so no stale share lingers in the sum over workers.
function M.lag()
  local out = {}
  for _, m in ipairs(members) do
    local lag = m.consumer and consumer_lag(m.consumer) or {}
    for _, topic in ipairs(m.topics) do
      local k = m.group .. "/" .. topic
      out[k] = (out[k] or 0) + (lag[topic] or 0)
    end
  end
  return out
end

local function report_lag()
  for key, n in pairs(M.lag()) do
    local group, topic = key:match("^(.-)/(.*)$")
    runtime.gauge(string.format('evently_consumer_lag{group="%s",topic="%s"}', group, topic), n)
  end
end

local function attempt(c, msg)
  local ok, v, err = pcall(c.handler, msg)
  if ok and (v ~= nil or err == nil) then return true end
  return false, ok and tostring(err) or tostring(v)
end

-- Parks a message that keeps failing on <topic>.dlq; tries until the
-- broker takes it, since committing past it before would lose it.
local function dead_letter(c, msg, attempts, why)
  local headers, kept = {}, 0
  for k, v in pairs(msg.headers or {}) do -- at most 16 in all: 5 of ours and up to 11 of its own
    if kept < 11 then headers[k] = v; kept = kept + 1 end
  end
  headers.error = why:sub(1, 1000)
  headers.attempts = tostring(attempts)
  headers["source-topic"], headers["source-partition"], headers["source-offset"] =
    msg.topic, tostring(msg.partition), tostring(msg.offset)
  local backoff = 0.2
  while true do
    local ok, err = core.produce({
      { topic = msg.topic .. ".dlq", key = msg.key, value = msg.value, headers = headers } })
    if ok then break end
    log.warn("kafka %s: dead-lettering %s[%d]@%d failed: %s; retrying", c.group, msg.topic, msg.partition,
      msg.offset, err)
    time.sleep(backoff); backoff = math.min(backoff * 2, 5)
  end
  log.warn("kafka %s: %s[%d]@%d failed %d times, sent to %s.dlq: %s", c.group, msg.topic, msg.partition,
    msg.offset, attempts, msg.topic, why)
end

local function handle(c, msg)
  local n = 0
  while true do
    n = n + 1
    local ok, why = attempt(c, msg)
    if ok then return end
    if n > c.retries then return dead_letter(c, msg, n, why) end
    time.sleep(math.min(0.05 * 2 ^ (n - 1), 2))
  end
end

local function run(c)
  local backoff = 0.5
  while not c.consumer do
    local ok, consumer = pcall(core.consumer, c.group, c.topics)
    if ok then c.consumer = consumer else
      log.warn("kafka %s: %s; again in %.1f s", c.group, tostring(consumer), backoff)
      time.sleep(backoff); backoff = math.min(backoff * 2, 10)
    end
  end
  -- A raise in here must neither end the member silently nor move past the
  -- batch (storing later offsets would commit past it): log it and go on
  -- with the same batch, its handled messages not handled again.
  local batch
  while true do
    local ok, err = pcall(function()
      if not batch then
        local first = c.consumer:poll(1)
        if not first then return end
        batch = { first }
        for _, m in ipairs(c.consumer:drain(c.batch - 1)) do batch[#batch + 1] = m end
        if c.before_batch then c.before_batch(batch) end
      end
      for _, m in ipairs(batch) do
        if not m.skip and not m.handled then handle(c, m); m.handled = true end
      end
      if c.after_batch then c.after_batch(batch) end
      for _, m in ipairs(batch) do
        if not c.consumer:store(m) then -- the partition moved: its new owner redelivers
          log.info("kafka %s: %s[%d]@%d handled after its partition moved", c.group, m.topic, m.partition, m.offset)
        end
      end
      batch = nil
    end)
    if not ok then
      log.error("kafka %s: consumer loop: %s; again in 1 s", c.group, tostring(err))
      time.sleep(1)
    end
  end
end

function M.consume(spec)
  if type(spec) ~= "table" then error("kafka.consume: spec table expected", 2) end
  local topics = type(spec.topic) == "table" and spec.topic or { spec.topic }
  for _, t in ipairs(topics) do
    if type(t) ~= "string" or t == "" then error("kafka.consume: topic required", 2) end
  end
  if type(spec.group) ~= "string" or spec.group == "" then error("kafka.consume: group required", 2) end
  if type(spec.handler) ~= "function" then error("kafka.consume: handler must be a function", 2) end
  local c = { topics = topics, group = spec.group, handler = spec.handler, retries = spec.retries or 5,
    batch = spec.batch or 1, before_batch = spec.before_batch, after_batch = spec.after_batch }
  members[#members + 1] = c
  if #members == 1 and runtime.worker().slot >= 0 then time.every(2, report_lag) end
  if runtime.worker().slot >= 0 or spec.now then time.after(0, run, c) end
  return c
end

return M
