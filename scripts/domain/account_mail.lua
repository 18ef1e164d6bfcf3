--- account_mail: the mails about an account itself (a password reset code,
-- an address confirmation), sent after the answer, so a caller can tell
-- neither from the answer nor from its time whether an account exists. A
-- mail that cannot go out is logged (never its code) and the user asks again.
local log = require "evently.log"
local time = require "evently.time"

local M = {}

local function send(kind, payload, user)
  local msg, err = require("domain.mail").message(kind, payload, user)
  if not msg then
    log.warn("%s mail for user %d: %s", kind, user.id, tostring(err))
    return
  end
  local ok, serr = require("evently.mail").send(msg)
  if not ok then log.warn("%s mail for user %d not sent: %s", kind, user.id, tostring(serr)) end
end

--- Sends template `kind` (templates/mail/<kind>.txt) with payload to user
-- ({id, email, name}) in the background.
function M.send_later(kind, payload, user)
  time.after(0, function() send(kind, payload, user) end)
end

--- Runs prepare() in the background, then mails what it returns (kind,
-- payload, user), or logs its nil, err: work that must not show in the
-- answer's time (a row written only for accounts that exist).
function M.later(prepare)
  time.after(0, function()
    local kind, payload, user = prepare()
    if kind then send(kind, payload, user) else log.warn("account mail not prepared: %s", tostring(payload)) end
  end)
end

return M
