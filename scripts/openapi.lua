--- The OpenAPI 3.1 document of the HTTP API (API.md), served at /openapi.json.
-- Kept next to the routes: a route added without its entry here fails
-- tests/integration/test_openapi.py.
local json = require "evently.json"

local function ref(name) return { ["$ref"] = "#/components/schemas/" .. name } end
local function arr(items) return { type = "array", items = items } end
local INT = { type = "integer" }
local STR = { type = "string" }
local TS = { type = "string", format = "date-time" }
local NULL_TS = { type = { "string", "null" }, format = "date-time" }

local function problem(desc, headers)
  return { description = desc, headers = headers, content = { ["application/problem+json"] = { schema = ref("Problem") } } }
end
local function body(schema, desc) return { description = desc or "OK", content = { ["application/json"] = { schema = schema } } } end
local function req(schema) return { required = true, content = { ["application/json"] = { schema = schema } } } end

local P = {
  ["400"] = problem("Malformed JSON"),
  ["401"] = problem("Missing, invalid, expired or revoked token"),
  ["403"] = problem("Wrong role"),
  ["404"] = problem("Not found (or another user's resource)"),
  ["409"] = problem("Conflict"),
  ["413"] = problem("Body over the size limit"),
  ["422"] = problem("Invalid fields; errors[] names each"),
  ["503"] = problem("A dependency cannot answer now"),
  -- API.md "Rate limits and overload"; the fields of draft-ietf-httpapi-ratelimit-headers
  ["429"] = problem("A rate limit was hit (type rate-limited); wait Retry-After seconds", {
    ["Retry-After"] = { required = true, description = "Seconds until a retry may pass", schema = { type = "integer", minimum = 1 } },
    ["RateLimit-Policy"] = { description = 'The policy hit, e.g. "login-address";q=30;w=60', schema = STR },
    ["RateLimit"] = { description = 'Its state, e.g. "login-address";r=0;t=2', schema = STR } }),
}
-- login and registration: the password hasher may be full (type busy, with Retry-After)
local BUSY = problem("Busy (type busy: the password hasher is full; retry after Retry-After seconds) "
  .. "or a dependency cannot answer now (type unavailable)",
  { ["Retry-After"] = { description = "Seconds to wait (type busy)", schema = { type = "integer", minimum = 1 } } })
local function with(codes, ok)
  local r = {}
  for k, v in pairs(ok) do r[k] = v end
  for _, c in ipairs(codes) do r[c] = P[c] end
  return r
end

local BEARER = { { bearer = json.empty_array } }
local ID = { name = "id", ["in"] = "path", required = true, schema = { type = "integer", minimum = 1 } }
local PAGE = { name = "page", ["in"] = "query", schema = { type = "integer", minimum = 1, default = 1 } }
local SIZE = { name = "size", ["in"] = "query", schema = { type = "integer", minimum = 1, maximum = 100, default = 20 } }

local function page_of(item)
  return { type = "object", required = { "items", "page", "size", "total" },
    properties = { items = arr(item), page = INT, size = INT, total = INT } }
end

local schemas = {
  Problem = { type = "object", required = { "type", "title", "status" }, properties = {
    type = STR, title = STR, status = INT, detail = STR, request_id = STR, available = INT, sold = INT,
    retry_after = INT, ["violated-policies"] = arr(STR),
    errors = arr({ type = "object", required = { "field", "message" }, properties = { field = STR, message = STR } }) } },
  User = { type = "object", required = { "id", "email", "name", "role", "created_at" }, properties = {
    id = INT, email = { type = "string", format = "email" }, name = STR,
    role = { type = "string", enum = { "user", "admin" } }, created_at = TS } },
  Event = { type = "object", required = { "id", "name", "venue", "starts_at", "capacity", "available",
      "price_cents", "currency", "max_per_booking", "status", "created_at", "updated_at" }, properties = {
    id = INT, name = STR, description = STR, venue = STR, starts_at = TS, ends_at = NULL_TS,
    capacity = INT, available = INT, price_cents = INT, currency = { type = "string", pattern = "^[A-Z]{3}$" },
    max_per_booking = INT, status = { type = "string", enum = { "draft", "published", "cancelled" } },
    sales_start = NULL_TS, sales_end = NULL_TS, created_at = TS, updated_at = TS } },
  EventInput = { type = "object", properties = {
    name = { type = "string", minLength = 1, maxLength = 200 }, description = { type = "string", maxLength = 10000 },
    venue = { type = "string", minLength = 1, maxLength = 200 }, starts_at = TS, ends_at = TS,
    capacity = { type = "integer", minimum = 1, maximum = 10000000 },
    price_cents = { type = "integer", minimum = 0, maximum = 100000000000 },
    currency = { type = "string", pattern = "^[A-Z]{3}$" }, max_per_booking = { type = "integer", minimum = 1, maximum = 1000 },
    status = { type = "string", enum = { "draft", "published", "cancelled" } }, sales_start = TS, sales_end = TS } },
  Booking = { type = "object", required = { "id", "event_id", "user_id", "quantity", "status", "total_cents",
      "currency", "created_at" }, properties = {
    id = INT, event_id = INT, user_id = INT, quantity = INT, status = { type = "string", enum = { "confirmed", "cancelled" } },
    total_cents = INT, currency = STR, created_at = TS, cancelled_at = NULL_TS } },
  WaitlistEntry = { type = "object", required = { "id", "event_id", "user_id", "quantity", "status" }, properties = {
    id = INT, event_id = INT, user_id = INT, quantity = INT,
    status = { type = "string", enum = { "waiting", "offered", "converted", "expired", "cancelled" } },
    position = { type = { "integer", "null" } }, offer_expires_at = NULL_TS, created_at = TS } },
  Notification = { type = "object", required = { "id", "type", "payload", "created_at" }, properties = {
    id = INT, type = STR, payload = { type = "object" }, created_at = TS, read_at = NULL_TS } },
}

local EventInputCreate = { allOf = { ref("EventInput"),
  { required = { "name", "venue", "starts_at", "capacity", "price_cents" } } } }

local paths = {
  ["/api/v1/auth/register"] = { post = { tags = { "auth" }, summary = "Create an account (role user)",
    description = "Limited per client address (rule `register-address`): past it 429 `rate-limited`.",
    requestBody = req({ type = "object", required = { "email", "password", "name" }, properties = {
      email = { type = "string", format = "email", maxLength = 254 }, password = { type = "string", minLength = 8, maxLength = 1024 },
      name = { type = "string", minLength = 1, maxLength = 200 } } }),
    responses = with({ "400", "409", "413", "422", "429" }, { ["503"] = BUSY, ["201"] = body({ type = "object",
      required = { "user", "token", "expires_at" }, properties = { user = ref("User"), token = STR, expires_at = TS } }, "Created") }) } },
  ["/api/v1/auth/login"] = { post = { tags = { "auth" }, summary = "Get a token",
    description = "Limited per client address (every attempt, rule `login-address`) and per account (wrong "
      .. "passwords, rules `login-account-address` and `login-account`): past a limit 429 `rate-limited`. "
      .. "503 `busy` when the password could not be checked now: never 401 for a right password.",
    requestBody = req({ type = "object", required = { "email", "password" }, properties = { email = STR, password = STR } }),
    responses = with({ "400", "401", "422", "429" }, { ["503"] = BUSY, ["403"] = problem("The account is disabled "
      .. "(type account-disabled) or its address is not confirmed yet (type email-unverified, only with the rule "
      .. "verify_email); said only to the right password"), ["200"] = body({ type = "object",
      required = { "token", "expires_at", "user" }, properties = { token = STR, expires_at = TS, user = ref("User") } }) }) } },
  ["/api/v1/auth/logout"] = { post = { tags = { "auth" }, summary = "Revoke the token at once", security = BEARER,
    responses = with({ "401", "503" }, { ["204"] = { description = "Logged out" } }) } },
  ["/api/v1/auth/logout-all"] = { post = { tags = { "auth" }, summary = "Revoke every token of the caller at once",
    description = "Every session of the account ends, this one included; their WebSockets close (1008).",
    security = BEARER, responses = with({ "401", "503" }, { ["204"] = { description = "Logged out everywhere" } }) } },
  ["/api/v1/auth/password-reset"] = { post = { tags = { "auth" }, summary = "Mail a password reset code",
    description = "Always 202, whether or not the account exists (no way to learn who has one); the mail, "
      .. "when the account exists and is not disabled, holds a code that works once, for "
      .. "`password_reset_minutes` (rules/auth.lua, default 60). Limited per client address (rule "
      .. "`reset-address`) and per email (rule `reset-account`): past a limit 429 `rate-limited`.",
    requestBody = req({ type = "object", required = { "email" }, properties = { email = { type = "string", maxLength = 254 } } }),
    responses = with({ "400", "413", "422", "429", "503" }, { ["202"] = body({ type = "object",
      required = { "status" }, properties = { status = { type = "string", enum = { "accepted" } } } }, "Accepted") }) } },
  ["/api/v1/auth/verify-email"] = { post = { tags = { "auth" }, summary = "Confirm an account's email address",
    description = "Only used when the operator's rule `verify_email` is on (rules/auth.lua; off by default): "
      .. "registration then answers 201 `{user, verification: \"mailed\"}` without a token, mails a code, and "
      .. "logins answer 403 `email-unverified` until the code is sent here. 422 naming `token` when the code is "
      .. "unknown, altered or expired.",
    requestBody = req({ type = "object", required = { "token" }, properties = { token = { type = "string", maxLength = 200 } } }),
    responses = with({ "400", "413", "422", "503" }, { ["204"] = { description = "Address confirmed" } }) } },
  ["/api/v1/auth/verify-email/resend"] = { post = { tags = { "auth" }, summary = "Mail a new confirmation code",
    description = "Always 202 (no way to learn who has an account); limited per address (rule `reset-address`) "
      .. "and per email (rule `verify-account`).",
    requestBody = req({ type = "object", required = { "email" }, properties = { email = { type = "string", maxLength = 254 } } }),
    responses = with({ "400", "413", "422", "429", "503" }, { ["202"] = body({ type = "object",
      required = { "status" }, properties = { status = { type = "string", enum = { "accepted" } } } }, "Accepted") }) } },
  ["/api/v1/auth/password-reset/confirm"] = { post = { tags = { "auth" }, summary = "Set a new password with a mailed code",
    description = "422 `validation` naming `token` when the code is unknown, used or expired. On success every "
      .. "session of the account ends. Limited per client address (rule `reset-address`).",
    requestBody = req({ type = "object", required = { "token", "password" }, properties = {
      token = { type = "string", minLength = 16, maxLength = 200 }, password = { type = "string", minLength = 8, maxLength = 1024 } } }),
    responses = with({ "400", "413", "422", "429" }, { ["503"] = BUSY, ["204"] = { description = "Password set" } }) } },
  ["/api/v1/users/me"] = { get = { tags = { "users" }, summary = "The caller", security = BEARER,
    responses = with({ "401", "503" }, { ["200"] = body(ref("User")) }) } },
  ["/api/v1/users/me/password"] = { post = { tags = { "users" }, summary = "Change the caller's password",
    description = "403 `invalid-credentials` when `current_password` is wrong; wrong guesses count against the "
      .. "same limits as logins (429). Every other session of the account ends; this one stays.",
    security = BEARER, requestBody = req({ type = "object", required = { "current_password", "password" }, properties = {
      current_password = { type = "string", maxLength = 1024 }, password = { type = "string", minLength = 8, maxLength = 1024 } } }),
    responses = with({ "400", "401", "403", "413", "422", "429" }, { ["503"] = BUSY,
      ["204"] = { description = "Password changed" } }) } },
  ["/api/v1/admin/users/{id}"] = { patch = { tags = { "users" }, summary = "Disable or enable an account",
    description = "`{\"disabled\": true}` revokes every token of the account at once (its WebSockets close) and "
      .. "its logins answer 403 `account-disabled`; `false` lets it log in again. An administrator cannot "
      .. "disable their own account (422).",
    security = BEARER, parameters = { ID },
    requestBody = req({ type = "object", required = { "disabled" }, properties = { disabled = { type = "boolean" } } }),
    responses = with({ "400", "401", "403", "404", "413", "422", "503" }, { ["200"] = body({ allOf = { ref("User"),
      { type = "object", required = { "disabled" }, properties = { disabled = { type = "boolean" } } } } }) }) } },
  ["/api/v1/events"] = {
    get = { tags = { "events" }, summary = "List events (drafts only for admins)", parameters = { PAGE, SIZE,
      { name = "q", ["in"] = "query", schema = { type = "string", maxLength = 200 } },
      { name = "from", ["in"] = "query", schema = TS }, { name = "to", ["in"] = "query", schema = TS },
      { name = "status", ["in"] = "query", schema = { type = "string", enum = { "draft", "published", "cancelled" } } } },
      responses = with({ "422", "503" }, { ["200"] = body(page_of(ref("Event"))) }) },
    post = { tags = { "events" }, summary = "Create an event", security = BEARER, requestBody = req(EventInputCreate),
      responses = with({ "400", "401", "403", "413", "422", "503" }, { ["201"] = body(ref("Event"), "Created") }) } },
  ["/api/v1/events/{id}"] = {
    get = { tags = { "events" }, summary = "One event", parameters = { ID },
      responses = with({ "404", "503" }, { ["200"] = body(ref("Event")) }) },
    patch = { tags = { "events" }, summary = "Change an event (capacity never below sold)", security = BEARER,
      parameters = { ID }, requestBody = req(ref("EventInput")),
      responses = with({ "400", "401", "403", "404", "409", "413", "422", "503" }, { ["200"] = body(ref("Event")) }) },
    delete = { tags = { "events" }, summary = "Cancel an event, its bookings and waitlist", security = BEARER,
      parameters = { ID }, responses = with({ "401", "403", "404", "503" }, { ["200"] = body(ref("Event")) }) } },
  ["/api/v1/events/{id}/waitlist"] = { post = { tags = { "waitlist" }, summary = "Join the waitlist (only when sold out)",
    security = BEARER, parameters = { ID },
    description = "409 `tickets-available` when the event can serve the quantity now, `not-on-sale`, or "
      .. "`limit-exceeded` (with `max_per_user` and `held`) when the user's confirmed tickets for the event "
      .. "plus the quantity would pass the operator's per-user limit.",
    requestBody = req({ type = "object", required = { "quantity" }, properties = { quantity = { type = "integer", minimum = 1 } } }),
    responses = with({ "400", "401", "404", "409", "422", "503" }, { ["201"] = body(ref("WaitlistEntry"), "Created") }) } },
  ["/api/v1/waitlist"] = { get = { tags = { "waitlist" }, summary = "The caller's entries, newest first",
    security = BEARER, parameters = { PAGE, SIZE },
    responses = with({ "401", "422", "503" }, { ["200"] = body(page_of(ref("WaitlistEntry"))) }) } },
  ["/api/v1/waitlist/{id}"] = { delete = { tags = { "waitlist" }, summary = "Leave the waitlist", security = BEARER,
    parameters = { ID }, responses = with({ "401", "404", "503" }, { ["204"] = { description = "Left" } }) } },
  ["/api/v1/bookings"] = {
    get = { tags = { "bookings" }, summary = "The caller's bookings (admins: all, or ?event_id=)", security = BEARER,
      parameters = { PAGE, SIZE, { name = "event_id", ["in"] = "query", schema = INT } },
      responses = with({ "401", "422", "503" }, { ["200"] = body(page_of(ref("Booking"))) }) },
    post = { tags = { "bookings" }, summary = "Book tickets atomically", security = BEARER,
      parameters = { { name = "Idempotency-Key", ["in"] = "header",
        schema = { type = "string", minLength = 1, maxLength = 255, pattern = "^[\\x20-\\x7e]+$" } } },
      requestBody = req({ type = "object", required = { "event_id", "quantity" }, properties = {
        event_id = { type = "integer", minimum = 1 }, quantity = { type = "integer", minimum = 1 },
        waitlist_entry_id = { type = "integer", minimum = 1 } } }),
      description = "Problem types answered with 409: `sold-out` (with `available`), `not-on-sale`, "
        .. "`no-offer` (waitlist_entry_id), `idempotency-in-flight`, and `limit-exceeded` when the booking "
        .. "would take the user's confirmed tickets for the event over the operator's per-user limit "
        .. "(rules/booking.lua `max_per_user`; the body has `max_per_user` and `held`, the user's "
        .. "confirmed tickets for the event; cancelling a booking frees its tickets again). "
        .. "503 `busy` (with `Retry-After`): the request waited too long behind others for the event "
        .. "and was withdrawn; nothing was booked. 504 (`outcome-unknown`, or `timeout` at the handler "
        .. "deadline): the booking may or may not have been made; `GET /bookings` shows it, and a "
        .. "request with an `Idempotency-Key` is resolved by sending it again.",
      responses = with({ "400", "401", "404", "413", "422" }, { ["201"] = body(ref("Booking"), "Created (or replayed)"),
        ["409"] = problem("sold-out, not-on-sale, no-offer, idempotency-in-flight or limit-exceeded (see description)"),
        ["503"] = { description = "busy (not booked; retry after Retry-After seconds) or a dependency cannot answer now",
          headers = { ["Retry-After"] = { schema = INT } },
          content = { ["application/problem+json"] = { schema = ref("Problem") } } },
        ["504"] = problem("outcome unknown: the booking may have been made (see description)") }) } },
  ["/api/v1/bookings/{id}"] = {
    get = { tags = { "bookings" }, summary = "One booking (owner or admin)", security = BEARER, parameters = { ID },
      responses = with({ "401", "404", "503" }, { ["200"] = body(ref("Booking")) }) },
    delete = { tags = { "bookings" }, summary = "Cancel; seats come back exactly once", security = BEARER, parameters = { ID },
      responses = with({ "401", "404", "503" }, { ["200"] = body(ref("Booking")) }) } },
  ["/api/v1/notifications"] = { get = { tags = { "notifications" }, summary = "The caller's notifications, newest first",
    security = BEARER, parameters = { PAGE, SIZE },
    responses = with({ "401", "422", "503" }, { ["200"] = body(page_of(ref("Notification"))) }) } },
  ["/api/v1/ws"] = { get = { tags = { "notifications" }, summary = "WebSocket: the caller's live notifications",
    description = "A WebSocket upgrade (RFC 6455: Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: 13, " ..
      "Sec-WebSocket-Key). The token comes as ?token= or Authorization: Bearer. After 101 the server pushes text " ..
      "messages, each the JSON object {type, payload, created_at}; it pings every 30 s and drops a peer that stays " ..
      "silent; a client message over 64 KiB closes with 1009, a client that does not read its messages with 1008. " ..
      "Connects are limited per user (`ws-connect-user`) and per address (`ws-connect-address`): 429. A user holds " ..
      "at most 8 sockets per worker (a new one closes the oldest with 1008); a full worker answers 503 `busy`. " ..
      "A socket closes with 1008 when its token is revoked or expires, and with 1001 after 24 h.",
    security = { { bearer = json.empty_array }, { token = json.empty_array } },
    parameters = { { name = "token", ["in"] = "query", required = false, schema = STR,
      description = "The bearer token, for clients that cannot set headers on a WebSocket" } },
    responses = with({ "401", "429", "503" }, {
      ["101"] = { description = "Switching Protocols: the connection is a WebSocket from here on" },
      ["400"] = problem("Not a valid WebSocket handshake (type bad-websocket-handshake)") }) } },
  ["/api/v1/notifications/{id}/read"] = { post = { tags = { "notifications" }, summary = "Mark read", security = BEARER,
    parameters = { ID }, responses = with({ "401", "404", "503" }, { ["200"] = body(ref("Notification")) }) } },
  ["/api/v1/admin/dead-letters"] = { get = { tags = { "admin" }, security = BEARER,
    summary = "Messages a consumer gave up on (in process; with Kafka they are the <topic>.dlq topics)",
    parameters = { PAGE, SIZE, { name = "group", ["in"] = "query", schema = STR } },
    responses = with({ "401", "403", "422", "503" }, { ["200"] = body(page_of({ type = "object", properties = {
      id = INT, consumer_group = STR, topic = STR, outbox_id = INT, type = STR, attempts = INT, error = STR,
      created_at = TS, retry_requested_at = NULL_TS } })) }) } },
  ["/api/v1/admin/dead-letters/retry"] = { post = { tags = { "admin" }, security = BEARER,
    summary = "Hand dead letters to their consumer again",
    description = "Give `ids` (up to 1,000) or `group` (all of a consumer group's). Each marked dead letter goes to "
      .. "its group's handler on the group's next pass: deleted once handled, unmarked with its new error "
      .. "otherwise.",
    requestBody = req({ type = "object", properties = { ids = arr({ type = "integer", minimum = 1 }),
      group = { type = "string", minLength = 1, maxLength = 200 } } }),
    responses = with({ "400", "401", "403", "422", "503" }, { ["202"] = body({ type = "object", required = { "marked" },
      properties = { marked = INT } }, "Marked") }) } },
  ["/api/v1/admin/analytics/summary"] = { get = { tags = { "admin" }, summary = "Sales summary", security = BEARER,
    responses = with({ "401", "403", "503" }, { ["200"] = body({ type = "object", properties = {
      events = INT, bookings = INT, tickets_sold = INT, revenue_cents = INT, cancellations = INT,
      cancellation_rate = { type = "number" }, top_events = arr({ type = "object" }) } }) }) } },
  ["/api/v1/admin/analytics/events/{id}"] = { get = { tags = { "admin" }, summary = "One event's sales", security = BEARER,
    parameters = { ID }, responses = with({ "401", "403", "404", "503" }, { ["200"] = body({ type = "object", properties = {
      event_id = INT, capacity = INT, sold = INT, available = INT, utilization = { type = "number" }, bookings = INT,
      cancellations = INT, waitlist_waiting = INT,
      sales_by_day = arr({ type = "object", properties = { date = STR, tickets = INT, revenue_cents = INT } }) } }) }) } },
  ["/health"] = { get = { tags = { "operations" }, summary = "Liveness",
    responses = { ["200"] = body({ type = "object", properties = { status = STR } }) } } },
  ["/health/ready"] = { get = { tags = { "operations" }, summary = "Readiness of each dependency",
    description = "With `ops_listen` set, this listener answers only `{\"status\": \"ready\"}` or "
      .. "`{\"status\": \"not-ready\"}` (503); each dependency's state and details are served on the "
      .. "operations listener.",
    responses = { ["200"] = body({ type = "object" }), ["503"] = body({ type = "object" }, "Not ready") } } },
  ["/metrics"] = { get = { tags = { "operations" }, summary = "Prometheus text exposition",
    description = "404 here when `ops_listen` is set: the figures are served on the operations listener.",
    responses = { ["200"] = { description = "OK", content = { ["text/plain"] = { schema = STR } } },
      ["404"] = P["404"] } } },
}

return {
  openapi = "3.1.0",
  info = { title = "Evently API", version = "1.0.0",
    description = "Event ticketing. Errors are RFC 9457 problem documents (application/problem+json); " ..
      "every response carries X-Request-Id." },
  servers = { { url = "/" } },
  paths = paths,
  components = { schemas = schemas,
    securitySchemes = { bearer = { type = "http", scheme = "bearer" },
      token = { type = "apiKey", ["in"] = "query", name = "token" } } },
}
