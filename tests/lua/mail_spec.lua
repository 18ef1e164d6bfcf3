-- evently.mail (argument checks, the message it builds, failures without a
-- server), evently.template, and the app's mail templates (domain.mail).
-- Sending to a real SMTP server is tested in tests/integration/test_mail.py.
local mail = require "evently.mail"
local template = require "evently.template"
local runtime = require "evently.runtime"
local time = require "evently.time"
local json = require "evently.json"

-- a port where nothing listens: connections are refused at once
local DOWN = "smtp://127.0.0.1:1"

local function msg(over)
  local m = { to = "bob@example.com", subject = "Hello", text = "Body\n" }
  for k, v in pairs(over or {}) do m[k] = v end
  return m
end

-- header block of a built message, unfolded, as name -> value
local function headers_of(raw)
  local head = raw:match("^(.-)\r\n\r\n")
  head = head:gsub("\r\n[ \t]", " ")
  local h = {}
  for line in (head .. "\r\n"):gmatch("(.-)\r\n") do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    h[k:lower()] = v
  end
  return h
end

describe("evently.template", function()
  it("replaces {{name}} and {{a.b}} fields, spaces inside braces allowed", function()
    assert.are.equal("Hi Ann, 3 of x", template.render("Hi {{name}}, {{ n }} of {{ev.name}}",
      { name = "Ann", n = 3, ev = { name = "x" } }))
  end)

  it("writes integers without .0 and null as empty", function()
    assert.are.equal("2 / 2 / 2.5 / true / []", template.render("{{a}} / {{b}} / {{c}} / {{d}} / [{{e}}]",
      { a = 2, b = 2.0, c = 2.5, d = true, e = json.null }))
  end)

  it("raises on a field nobody gives, naming it", function()
    assert.has_error(function() template.render("Hi {{nmae}}", { name = "x" }) end,
      "template: no value for 'nmae'")
    assert.has_error(function() template.render("{{t}}", { t = {} }) end, "template: no value for 't'")
  end)

  it("keeps line breaks in body values but drops other control characters", function()
    assert.are.equal("a\nb\tc", template.render("{{v}}", { v = "a\r\nb\tc\0\27" }))
  end)

  it("line mode turns line breaks into spaces, so a value cannot start a header", function()
    assert.are.equal("Hi x Bcc: evil@example.com", template.render("Hi {{v}}", { v = "x\r\nBcc: evil@example.com" },
      { line = true }))
  end)

  it("does not expand fields inside substituted values", function()
    assert.are.equal("{{secret}}", template.render("{{v}}", { v = "{{secret}}", secret = "no" }))
  end)
end)

describe("evently.mail.build", function()
  it("builds an RFC 5322 message: headers, default From, quoted-printable body", function()
    local raw = assert(mail.build(msg { text = "Line one\nnaïve = " .. string.rep("y", 90) .. "\n" }))
    local h = headers_of(raw)
    assert.are.equal("<bob@example.com>", h.to)
    assert.are.equal('"Evently" <no-reply@evently.local>', h.from)
    assert.are.equal("Hello", h.subject)
    assert.truthy(h.date:match("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d %+0000$"), h.date)
    assert.truthy(h["message-id"]:match("^<%x+@evently%.local>$"))
    assert.are.equal("text/plain; charset=utf-8", h["content-type"])
    assert.are.equal("quoted-printable", h["content-transfer-encoding"])
    local body = raw:match("\r\n\r\n(.*)$")
    assert.truthy(body:find("na=C3=AFve =3D ", 1, true))
    for line in body:gmatch("(.-)\r\n") do assert.is_true(#line <= 76, line) end
    assert.is_nil(raw:find("[^\r]\n")) -- every line ends in CRLF
  end)

  it("encodes a non-ASCII subject and display name as RFC 2047 words", function()
    local raw = assert(mail.build(msg { subject = "Billets confirmés — Köln", to = "Zoë <zoe@example.com>" }))
    local h = headers_of(raw)
    assert.truthy(h.subject:match("^=%?UTF%-8%?B%?"))
    assert.truthy(h.to:match("^=%?UTF%-8%?B%?.*%?= <zoe@example%.com>$"))
    assert.is_nil(raw:match("^(.-)\r\n\r\n"):find("[\128-\255]")) -- headers are 7-bit
  end)

  it("adds extra headers and refuses to override its own", function()
    local raw = assert(mail.build(msg { headers = { ["Reply-To"] = "help@example.com" } }))
    assert.are.equal("help@example.com", headers_of(raw)["reply-to"])
    local ok, err = mail.build(msg { headers = { Subject = "other" } })
    assert.is_nil(ok)
    assert.are.equal("invalid: header 'Subject' is set by evently.mail", err)
  end)

  it("refuses CR or LF in subject, to, from and header values (no header injection)", function()
    for _, over in ipairs {
      { subject = "Hi\r\nBcc: evil@example.com" },
      { subject = "Hi\nX: y" },
      { to = "bob@example.com\r\nBcc: evil@example.com" },
      { from = "Evil\r\n <evil@example.com>" },
      { headers = { ["X-Note"] = "a\r\nBcc: evil@example.com" } },
    } do
      local ok, err = mail.build(msg(over))
      assert.is_nil(ok)
      assert.truthy(err:match("^invalid: .*CR, LF"), err)
    end
  end)

  it("refuses a NUL byte in a header field (C would cut the value there)", function()
    for _, over in ipairs { { to = "bob@example.com\0\r\nBcc: evil@example.com" }, { subject = "a\0b" },
      { headers = { ["X-A"] = "v\0\r\nBcc: evil@example.com" } } } do
      local ok, err = mail.build(msg(over))
      assert.is_nil(ok)
      assert.truthy(err:match("^invalid: .*control character"), err)
    end
    assert.truthy(mail.build(msg { text = "a\0b" })) -- the body carries it as =00
  end)

  it("refuses what is not an address", function()
    for _, to in ipairs { "bob", "bob@", "@example.com", "a b@example.com", "Bob <bob@example.com", "a@b@c" } do
      local ok, err = mail.build(msg { to = to })
      assert.is_nil(ok)
      assert.truthy(err:match("^invalid: to"), to .. ": " .. tostring(err))
    end
  end)

  it("raises on wrong argument types", function()
    assert.has_error(function() mail.build("x") end)
    assert.has_error(function() mail.send { to = "a@b.c", subject = 1, text = "x" } end,
      "mail.send: 'subject' must be a string")
    assert.has_error(function() mail.send(msg { retries = -1 }) end)
    assert.has_error(function() mail.send(msg { headers = "x" }) end)
    assert.has_error(function() mail.send(msg { url = DOWN, timeout = 0 }) end)
  end)
end)

describe("evently.mail.send without a server", function()
  it("says so when no SMTP server is configured", function()
    if runtime.config().smtp_url then return pending("EVENTLY_SMTP_URL is set") end
    assert.are.same({ nil, "unavailable: no SMTP configured (EVENTLY_SMTP_URL)", 0 }, { mail.send(msg()) })
  end)

  it("fails fast with 'unavailable' when nothing listens, and retries with backoff", function()
    local t0 = time.monotonic()
    local ok, err = mail.send(msg { url = DOWN })
    assert.is_nil(ok)
    assert.truthy(err:match("^unavailable: "), err)
    assert.is_true(time.monotonic() - t0 < 2)
    t0 = time.monotonic()
    ok, err = mail.send(msg { url = DOWN, retries = 2, retry_delay = 0.05 })
    assert.is_nil(ok)
    assert.truthy(err:match("^unavailable: "), err)
    assert.is_true(time.monotonic() - t0 >= 0.14) -- slept 0.05 + 0.1
  end)

  it("does not send, nor retry, an invalid message", function()
    local t0 = time.monotonic()
    local ok, err = mail.send(msg { url = DOWN, subject = "a\nb", retries = 3, retry_delay = 1 })
    assert.is_nil(ok)
    assert.truthy(err:match("^invalid: subject"), err)
    assert.is_true(time.monotonic() - t0 < 0.5)
  end)

  it("tells transient failures from permanent ones", function()
    assert.is_true(mail.is_transient("unavailable: connection refused"))
    assert.is_true(mail.is_transient("deferred: 451 4.3.0 later"))
    assert.is_true(mail.is_transient("timeout: slow"))
    assert.is_false(mail.is_transient("refused: 550 5.1.1 unknown"))
    assert.is_false(mail.is_transient("invalid: subject contains CR"))
    assert.are.equal("refused", mail.kind("refused: 550 x"))
  end)
end)

describe("domain.mail templates", function()
  local dmail = require "domain.mail"
  local payloads = {
    ["booking.confirmed"] = { booking_id = 41, event_id = 7, user_id = 3, quantity = 2, available = 10 },
    ["booking.cancelled"] = { booking_id = 41, event_id = 7, user_id = 3, quantity = 1, reason = "event.cancelled" },
    ["waitlist.offered"] = { waitlist_entry_id = 5, event_id = 7, quantity = 3,
      offer_expires_at = "2026-05-01T19:15:00.5Z" },
    ["waitlist.expired"] = { waitlist_entry_id = 5, event_id = 7, quantity = 3 },
    ["event.cancelled"] = { event_id = 7 },
  }
  local user = { name = "Ann", email = "ann@example.com" }
  local event = { name = "Jazz Night", venue = "Blue Hall", starts_at = "2026-05-02T20:00:00Z" }

  it("has a template for every notification type, and each renders", function()
    for _, kind in ipairs(dmail.types) do
      local subject, text = dmail.render(kind, payloads[kind], user, event)
      assert.truthy(subject, kind .. ": " .. tostring(text))
      assert.truthy(subject:find("Jazz Night", 1, true), subject)
      assert.is_nil(subject:find("[\r\n]"))
      assert.truthy(text:find("Hello Ann,", 1, true), text)
      assert.is_nil(text:find("{{", 1, true))
    end
  end)

  it("fills in ids, ticket counts and times", function()
    local subject, text = dmail.render("booking.confirmed", payloads["booking.confirmed"], user, event)
    assert.are.equal("Booking #41 confirmed: Jazz Night", subject)
    assert.truthy(text:find("2 tickets for Jazz Night", 1, true))
    assert.truthy(text:find("Blue Hall, starts 2026-05-02 20:00 UTC.", 1, true))
    subject = dmail.render("waitlist.offered", payloads["waitlist.offered"], user, event)
    assert.truthy(subject:find("2026-05-01 19:15 UTC", 1, true), subject)
    local _, cancelled = dmail.render("booking.cancelled", payloads["booking.cancelled"], user, event)
    assert.truthy(cancelled:find("The event itself was cancelled.", 1, true))
  end)

  it("works without user and event rows", function()
    local subject, text = dmail.render("event.cancelled", { event_id = 9 })
    assert.are.equal("Cancelled: event #9", subject)
    assert.truthy(text:find("Hello there,", 1, true))
  end)

  it("keeps an event name with line breaks on the subject line", function()
    local subject = dmail.render("event.cancelled", { event_id = 9 }, user, { name = "Jazz\r\nBcc: x@y.z" })
    assert.are.equal("Cancelled: Jazz Bcc: x@y.z", subject)
  end)

  it("answers nil, err for a type without a template", function()
    assert.are.same({ nil, "no mail template for booking.unknown" }, { dmail.render("booking.unknown", {}) })
    assert.are.same({ nil, "no mail template for ../x" }, { dmail.render("../x", {}) })
  end)

  it("message() gives what evently.mail.send takes", function()
    local m = assert(dmail.message("booking.confirmed", payloads["booking.confirmed"], user, event))
    assert.are.equal("ann@example.com", m.to)
    assert.truthy(mail.build(m))
    assert.are.same({ nil, "no email address for the recipient" },
      { dmail.message("booking.confirmed", payloads["booking.confirmed"], {}) })
  end)
end)
