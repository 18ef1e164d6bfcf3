-- A small app for tests/integration/test_mail.py: sends mail from a request
-- so the tests can watch the worker keep serving while SMTP is slow.
local app = require "evently.app"
local mail = require "evently.mail"

-- POST /mail {to, subject, text, from?, timeout?, retries?} -> 200 {message_id} | 502 {error}
app.post("/mail", function(req)
  local b = req.json or {}
  local ok, res = mail.send { to = b.to, subject = b.subject, text = b.text, from = b.from,
    timeout = b.timeout, retries = b.retries }
  if not ok then return 502, { error = res } end
  return { message_id = res }
end)

app.get("/mail/pending", function() return { pending = mail.pending() } end)
