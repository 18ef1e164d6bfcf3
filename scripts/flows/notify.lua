--- flows.notify: domain events -> the user's WebSocket connections and mailbox.
-- The in-app row is written with the change itself (domain.notify); these
-- two consumers deliver the rest. Each channel is its own consumer group, so
-- a mail server that is down delays mail only, and a retry of one never
-- repeats the other. Mail keeps a per-recipient record, so a retried
-- message (e.g. event.cancelled to many holders) mails nobody twice.
local db = require "evently.db"
local log = require "evently.log"
local runtime = require "evently.runtime"
local stream = require "evently.stream"
local recipients = require "flows.recipients"

local M = {}

local TOPICS = { "waitlist-notification", "booking-confirmed", "booking-cancelled", "event-cancelled" }

-- A mail server that defers, is unreachable or slow, or Redis down, is waited
-- out (stream.later) rather than counted towards the dead letters: an outage
-- of minutes must not dead-letter every message it meets. A refused or
-- invalid address is the message's own failure.
local TRANSIENT_MAIL = { deferred = true, unavailable = true, timeout = true }
local function fan_out_failed(err)
  local why = "websocket fan-out: " .. tostring(err)
  if type(err) == "table" then return stream.later(why) end -- Redis's error value: Redis failed
  return why
end

local function message(msg)
  return { type = msg.type, payload = msg.payload, created_at = msg.created_at }
end

local function push(msg)
  local ws = require "evently.ws"
  for _, uid in ipairs(recipients.of(msg)) do
    local ok, err = ws.publish(uid, message(msg))
    if not ok then return nil, fan_out_failed(err) end
  end
  return true
end

-- A batch's pushes in one Redis round trip: a hot event's confirmations
-- come hundreds a second, and a round trip each would hold the consumer up.
local function push_all(msgs)
  local items = {}
  for _, msg in ipairs(msgs) do
    for _, uid in ipairs(recipients.of(msg)) do items[#items + 1] = { uid, message(msg) } end
  end
  local ws = require "evently.ws"
  local ok, err = ws.publish_many(items)
  if not ok then return nil, fan_out_failed(err) end
  return true
end

local function mail_one(msg, user, event, mail, templates)
  local done, err = db.one("SELECT 1 AS x FROM sent_emails WHERE message_id = $1 AND user_id = $2", msg.id, user.id)
  if err then return nil, err end
  if done then return true end
  local subject, text = templates.render(msg.type, msg.payload, user, event)
  if not subject then return true end -- no template for this type: nothing to mail
  local ok, serr = mail.send { to = user.email, subject = subject, text = text }
  if not ok then
    local why = "mail to user " .. user.id .. ": " .. tostring(serr)
    if TRANSIENT_MAIL[tostring(serr):match("^%a+")] then return nil, stream.later(why) end
    return nil, why
  end
  assert(db.query("INSERT INTO sent_emails (message_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    msg.id, user.id))
  return true
end

local function email(msg)
  if not runtime.config().smtp_url then return true end -- mail is off: nothing to send, nothing to retry
  local mail, templates = require "evently.mail", require "domain.mail"
  local event = msg.payload and msg.payload.event_id and
    db.one("SELECT id, name, venue, starts_at FROM events WHERE id = $1", msg.payload.event_id)
  for _, user in ipairs(recipients.users(recipients.of(msg))) do
    local ok, err = mail_one(msg, user, event or nil, mail, templates)
    if not ok then return nil, err end
  end
  return true
end

function M.start()
  for _, topic in ipairs(TOPICS) do
    stream.consume { topic = topic, group = "notify-websocket", handler = push, batch_handler = push_all }
    stream.consume { topic = topic, group = "notify-email", handler = email, retries = 8 }
  end
  log.debug("notification flows consuming %d topics", #TOPICS)
end

return M
