--- evently.mail: email over SMTP, sequential-looking, never blocking the loop.
--   ok, err = mail.send{to=, subject=, text=, from=?, headers=?, timeout=?,
--                       connect_timeout=?, retries=?, retry_delay=?, url=?}
--       Sends one plain-text (UTF-8) message to one recipient and yields until
--       the SMTP server accepted it: true, message_id. On failure nil, err,
--       smtp_code (the server's last reply code, 0 when none).
--       to, from: "addr" or "Display Name <addr>"; from defaults to
--       EVENTLY_MAIL_FROM. headers: {["Reply-To"] = "..."} (not the ones
--       evently.mail sets itself). timeout: seconds for the whole send
--       (default 30); connect_timeout (default 10). url: overrides
--       EVENTLY_SMTP_URL (smtp[s]://[user:pass@]host[:port]).
--       retries (default 0): transient failures (unavailable, deferred,
--       timeout) are tried again up to this many times, sleeping retry_delay
--       seconds (default 0.5) doubling up to 30 s between tries. Permanent
--       ones (refused = 5xx, invalid) are returned at once.
--   ok, err = mail.send_retrying{...}    send with retries = 5 unless given
--   mail.kind(err) -> "refused", "timeout", ...   the first word of err
--   mail.is_transient(err) -> boolean             worth trying again later
--   mail.build{to=, subject=, text=, from=?, headers=?} -> message | nil, err
--       the RFC 5322 text send would transmit (headers, quoted-printable body)
-- err starts with one word, then ": detail":
--   "unavailable: no SMTP configured (EVENTLY_SMTP_URL)", "unavailable: <why the
--   connection failed>", "refused: 550 5.1.1 <server text>", "deferred: 451 ...",
--   "timeout: ...", "invalid: subject contains CR, LF or another control
--   character" (nothing can inject a header), "error: ...".
-- Wrong argument types raise. send runs in a request, timer or script coroutine.
local core = require "evently.mail.core"
local runtime = require "evently.runtime"
local time = require "evently.time"
local log = require "evently.log"

local M = {}

local TRANSIENT = { unavailable = true, deferred = true, timeout = true, busy = true }

function M.kind(err)
  return type(err) == "string" and err:match("^(%a+)") or nil
end

function M.is_transient(err)
  return TRANSIENT[M.kind(err)] == true
end

local function check(msg, level)
  if type(msg) ~= "table" then
    error("mail.send: expected a table {to=, subject=, text=}", level + 1)
  end
  for _, k in ipairs { "to", "subject", "text" } do
    if type(msg[k]) ~= "string" then error(("mail.send: '%s' must be a string"):format(k), level + 1) end
  end
  for _, k in ipairs { "from", "url" } do
    if msg[k] ~= nil and type(msg[k]) ~= "string" then
      error(("mail.send: '%s' must be a string"):format(k), level + 1)
    end
  end
  if msg.headers ~= nil and type(msg.headers) ~= "table" then
    error("mail.send: 'headers' must be a table of name = value", level + 1)
  end
  local r = msg.retries
  if r ~= nil and (math.type(r) ~= "integer" or r < 0 or r > 20) then
    error("mail.send: 'retries' must be an integer in 0..20", level + 1)
  end
  local d = msg.retry_delay
  if d ~= nil and (type(d) ~= "number" or d < 0 or d > 60) then
    error("mail.send: 'retry_delay' must be a number of seconds in 0..60", level + 1)
  end
end

local function core_msg(msg, cfg, url)
  return {
    url = url, from = msg.from or cfg.mail_from, to = msg.to, subject = msg.subject,
    text = msg.text, headers = msg.headers, timeout = msg.timeout,
    connect_timeout = msg.connect_timeout,
  }
end

local function send(msg, level)
  check(msg, level + 1)
  local cfg = runtime.config()
  local url = msg.url or cfg.smtp_url
  if not url or url == "" then
    return nil, "unavailable: no SMTP configured (EVENTLY_SMTP_URL)", 0
  end
  local m = core_msg(msg, cfg, url)
  local retries, delay = msg.retries or 0, msg.retry_delay or 0.5
  local attempt = 0
  while true do
    local ok, res, code = core.send(m)
    if ok then return true, res end
    if attempt >= retries or not M.is_transient(res) then return nil, res, code end
    attempt = attempt + 1
    local wait = math.min(delay * 2 ^ (attempt - 1), 30)
    log.info("mail to %s: %s; try %d of %d in %.2f s", msg.to, res, attempt + 1, retries + 1, wait)
    time.sleep(wait)
  end
end

function M.send(msg)
  return send(msg, 2)
end

function M.send_retrying(msg)
  if type(msg) == "table" and msg.retries == nil then
    local copy = {}
    for k, v in pairs(msg) do copy[k] = v end
    copy.retries = 5
    msg = copy
  end
  return send(msg, 2)
end

function M.build(msg)
  check(msg, 2)
  return core.build(core_msg(msg, runtime.config(), nil))
end

M.pending = core.pending

return M
