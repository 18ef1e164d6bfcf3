--- mail: the emails Evently sends for its notification types, rendered from
-- the operator-editable templates in <scripts>/templates/mail/<type>.txt
-- (first line "Subject: ...", a blank line, then the body; {{name}} fields,
-- see evently.template). Sending is the caller's business (evently.mail).
--
--   subject, text = mail.render(type, payload, user?, event?)
--       type: "booking.confirmed", "booking.cancelled", "waitlist.offered",
--       "waitlist.expired", "event.cancelled" (M.types). payload: the outbox /
--       notification payload (event_id, booking_id, quantity,
--       offer_expires_at, reason, ...). user: {name, email} of the recipient,
--       event: the events row ({name, venue, starts_at}); both optional, the
--       text then says "there" and "event #<id>". nil, err when there is no
--       template for type; raises when a template names a field nobody gives.
--   msg = mail.message(type, payload, user, event) -> {to, subject, text}
--       ready for require("evently.mail").send(msg); nil, err as render, or
--       when user has no email.
--
-- Fields a template may use: every payload field, and name, event_name,
-- event_details ("Venue, starts 2026-05-01 19:00 UTC." or ""), tickets
-- ("1 ticket", "3 tickets"), reason_text ("" or a sentence), offer_expires_at
-- (readable UTC). Templates are read once per worker (a reload re-reads them).
local template = require "evently.template"
local runtime = require "evently.runtime"

local M = {}

M.types = { "booking.confirmed", "booking.cancelled", "waitlist.offered", "waitlist.expired",
  "event.cancelled" }

M.dir = runtime.config().scripts .. "/templates/mail"

local cache = {}

local function load(kind)
  if type(kind) ~= "string" or not kind:match("^[%w_%-]+%.[%w_%-%.]+$") then
    return nil, "no mail template for " .. tostring(kind)
  end
  if cache[kind] then return cache[kind] end
  local f = io.open(M.dir .. "/" .. kind .. ".txt", "rb")
  if not f then return nil, "no mail template for " .. kind end
  local src = f:read("a")
  f:close()
  local subject, body = src:match("^Subject:[ \t]*([^\r\n]*)\r?\n\r?\n(.*)$")
  if not subject then
    error(("mail template %s/%s.txt: expected 'Subject: ...', a blank line, then the body"):format(M.dir, kind), 2)
  end
  cache[kind] = { subject = subject, body = body }
  return cache[kind]
end

-- "2026-05-01T19:00:00Z" (how the database gives timestamps) -> "2026-05-01 19:00 UTC"
local function readable_time(ts)
  if type(ts) ~= "string" then return nil end
  local d, hm = ts:match("^(%d%d%d%d%-%d%d%-%d%d)T(%d%d:%d%d)")
  return d and (d .. " " .. hm .. " UTC") or ts
end

local function details(event)
  if type(event) ~= "table" then return "" end
  local parts = {}
  if type(event.venue) == "string" and event.venue ~= "" then parts[#parts + 1] = event.venue end
  local when = readable_time(event.starts_at)
  if when then parts[#parts + 1] = "starts " .. when end
  return #parts > 0 and (table.concat(parts, ", ") .. ".") or ""
end

local function vars_for(payload, user, event)
  local v = {}
  for k, val in pairs(payload) do v[k] = val end
  v.name = (type(user) == "table" and type(user.name) == "string" and user.name ~= "") and user.name or "there"
  local ev_name = type(event) == "table" and event.name
  v.event_name = (type(ev_name) == "string" and ev_name ~= "") and ev_name
    or ("event #" .. tostring(payload.event_id or "?"))
  v.event_details = details(event)
  local q = math.tointeger(payload.quantity)
  v.tickets = q and (q == 1 and "1 ticket" or (q .. " tickets")) or "your tickets"
  v.reason_text = payload.reason == "event.cancelled" and "The event itself was cancelled." or ""
  v.offer_expires_at = readable_time(payload.offer_expires_at) or "the offer's end"
  return v
end

function M.render(kind, payload, user, event)
  if type(payload) ~= "table" then error("mail.render: payload must be a table", 2) end
  local t, err = load(kind)
  if not t then return nil, err end
  local v = vars_for(payload, user, event)
  return template.render(t.subject, v, { line = true }), template.render(t.body, v)
end

function M.message(kind, payload, user, event)
  if type(user) ~= "table" or type(user.email) ~= "string" then
    return nil, "no email address for the recipient"
  end
  local subject, text = M.render(kind, payload, user, event)
  if not subject then return nil, text end
  return { to = user.email, subject = subject, text = text }
end

return M
