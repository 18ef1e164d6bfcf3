-- #pg #redis: every statement a request runs is planned with an index on a
-- filled database (issue 14: "indexes for every query a request or a consumer
-- runs, checked with EXPLAIN in a test on a filled database").
--
-- The requests go through the real routes (scripts/routes/), and every
-- statement they send through evently.db is recorded with its parameters.
-- Then, inside one transaction that is rolled back (the other specs never
-- see it), the big tables get hundreds of thousands of rows, ANALYZE, and
-- each recorded statement is EXPLAINed with its own parameters: a sequential
-- scan of a big table fails the spec, naming the statement and its plan.
local app = require "evently.app"
local db = require "evently.db"
local json = require "evently.json"
local time = require "evently.time"
local tokens = require "domain.tokens"

local BASE = "/api/v1"

-- Tables that grow with history; a sequential scan of one costs what the
-- history holds.
local BIG = { "bookings", "outbox", "notifications", "waitlist", "auth_tokens", "idempotency_keys", "users",
  "events", "dead_letters", "user_booking_totals" }

-- Requests allowed to read a whole table, and why (admins only, and reading
-- everything is what they ask for).
local WHOLE = {
  -- the summary sums every booking
  ["GET /admin/analytics/summary"] = true,
  -- the total of every booking: counting all of them is the answer
  ["GET /bookings (admin, all)"] = true,
}

local function fill(tx, tag)
  local q = function(sql, ...) assert(tx.query(sql, ...)) end
  q([[INSERT INTO users (email, name, password_hash)
      SELECT 'plan-' || $1 || '-' || g || '@example.com', 'P', 'x' FROM generate_series(1, 20000) g]], tag)
  q([[INSERT INTO events (name, venue, starts_at, capacity, available, price_cents, status)
      SELECT 'Filler ' || g, 'V', now() + make_interval(days => g % 400), 1000000, 1000000, 100,
             CASE WHEN g % 10 = 0 THEN 'draft' ELSE 'published' END FROM generate_series(1, 100000) g]])
  q([[CREATE TEMP TABLE plan_users ON COMMIT DROP AS
      SELECT id, row_number() OVER () AS n FROM users WHERE email LIKE 'plan-' || $1 || '-%']], tag)
  q([[CREATE TEMP TABLE plan_events ON COMMIT DROP AS
      SELECT id, row_number() OVER () AS n FROM events WHERE name LIKE 'Filler %']])
  q([[INSERT INTO bookings (event_id, user_id, quantity, status, total_cents, currency)
      SELECT e.id, u.id, 1, 'confirmed', 100, 'EUR' FROM generate_series(1, 300000) g
      JOIN plan_users u ON u.n = 1 + g % 20000 JOIN plan_events e ON e.n = 1 + g % 5000]])
  q([[INSERT INTO outbox (event_type, aggregate_id, payload, published_at)
      SELECT 'booking.confirmed', g % 5000, jsonb_build_object('booking_id', g), now()
      FROM generate_series(1, 300000) g]])
  q([[INSERT INTO notifications (user_id, type, payload)
      SELECT u.id, 'booking.confirmed', jsonb_build_object('event_id', g % 5000)
      FROM generate_series(1, 200000) g JOIN plan_users u ON u.n = 1 + g % 20000]])
  -- waitlists are long on the few events that sold out
  q([[INSERT INTO waitlist (event_id, user_id, quantity)
      SELECT e.id, u.id, 1 FROM generate_series(1, 50000) g
      JOIN plan_users u ON u.n = 1 + g % 20000 JOIN plan_events e ON e.n = 1 + g % 20]])
  q([[INSERT INTO auth_tokens (token_hash, user_id, expires_at)
      SELECT 'plan-' || $1 || '-' || g, u.id, now() + interval '1 hour'
      FROM generate_series(1, 50000) g JOIN plan_users u ON u.n = 1 + g % 20000]], tag)
  q([[INSERT INTO idempotency_keys (user_id, key, request_hash, status)
      SELECT u.id, 'plan-' || g, 'h', 201 FROM generate_series(1, 50000) g JOIN plan_users u ON u.n = 1 + g % 20000]])
  q([[INSERT INTO dead_letters (consumer_group, topic, outbox_id, attempts, error)
      SELECT 'plans-' || (id % 7), 'booking-confirmed', id, 5, 'e' FROM outbox ORDER BY id DESC LIMIT 20000]])
  for _, t in ipairs(BIG) do q("ANALYZE " .. t) end
end

-- The statements a request sends, recorded by wrapping evently.db's entry
-- points, and those of every transaction (its tx.query/one/value).
local function recording(fn)
  local seen, saved, current = {}, {}, nil
  local function recorder(f)
    return function(sql, ...)
      seen[#seen + 1] = { sql = sql, args = table.pack(...), request = current }
      return f(sql, ...)
    end
  end
  for _, name in ipairs({ "query", "one", "value", "transaction" }) do saved[name] = db[name] end
  for _, name in ipairs({ "query", "one", "value" }) do db[name] = recorder(saved[name]) end
  db.transaction = function(body, opts)
    return saved.transaction(function(tx)
      for _, name in ipairs({ "query", "one", "value" }) do tx[name] = recorder(tx[name]) end
      return body(tx)
    end, opts)
  end
  local ok, err = pcall(fn, function(r) current = r end)
  for name, f in pairs(saved) do db[name] = f end
  assert(ok, err)
  return seen
end

-- What in an executed plan read history: a sequential scan of a big table,
-- or a node that threw away more than FILTERED rows (an index walked for its
-- order past rows of everything else, as the waitlist offer once did).
local FILTERED = 5000
local function history_read(plan)
  for _, t in ipairs(BIG) do
    local line = plan:match("[^\n]*Seq Scan on " .. t .. "%f[^%w_][^\n]*")
    if line then return line end
  end
  for n in plan:gmatch("Rows Removed by Filter: (%d+)") do
    if tonumber(n) > FILTERED then return "Rows Removed by Filter: " .. n end
  end
end

-- EXECUTE takes no bind parameters: its arguments go as literals.
local function literals(args)
  if args.n == 0 then return "" end
  local out = {}
  for i = 1, args.n do
    local a = args[i]
    out[i] = a == nil and "NULL" or type(a) == "string" and ("'" .. a:gsub("'", "''") .. "'") or tostring(a)
  end
  return "(" .. table.concat(out, ", ") .. ")"
end

describe("request statements on a filled database #pg #redis", function()
  local tag = tostring(math.floor(time.now() * 1000))

  setup(function()
    app.reset()
    for _, r in ipairs({ "auth", "users", "events", "bookings", "waitlist", "notifications", "analytics",
      "dead_letters" }) do
      require("routes." .. r)(app, BASE)
    end
  end)
  teardown(function() app.reset() end)

  it("runs none that reads a table's history: no sequential scan, no index walked past thousands of rows", function()
    local user = assert(db.one([[INSERT INTO users (email, name, password_hash) VALUES ($1, 'U', 'x')
        RETURNING id, email]], "plans-user-" .. tag .. "@example.com"))
    local admin = assert(db.value([[INSERT INTO users (email, name, password_hash, role)
        VALUES ($1, 'A', 'x', 'admin') RETURNING id]], "plans-admin-" .. tag .. "@example.com"))
    local event = assert(db.value([[INSERT INTO events (name, venue, starts_at, capacity, available, price_cents,
        status) VALUES ('Plans', 'V', now() + interval '3 days', 10, 9, 100, 'published') RETURNING id]]))
    local booking = assert(db.value([[INSERT INTO bookings (event_id, user_id, quantity, status, total_cents,
        currency) VALUES ($1, $2, 1, 'confirmed', 100, 'EUR') RETURNING id]], event, user.id))
    local ut, at = assert(tokens.issue(user.id)), assert(tokens.issue(admin))
    local as_user = { authorization = "Bearer " .. ut }
    local as_admin = { authorization = "Bearer " .. at }
    -- a sold-out event: another user waits, the user's cancellation offers the seats
    local waiter = assert(db.value([[INSERT INTO users (email, name, password_hash) VALUES ($1, 'W', 'x')
        RETURNING id]], "plans-waiter-" .. tag .. "@example.com"))
    local as_waiter = { authorization = "Bearer " .. assert(tokens.issue(waiter)) }
    local soldout = assert(db.value([[INSERT INTO events (name, venue, starts_at, capacity, available,
        price_cents, status) VALUES ('Plans sold out', 'V', now() + interval '3 days', 2, 0, 100, 'published')
        RETURNING id]]))
    local sold = assert(db.value([[INSERT INTO bookings (event_id, user_id, quantity, status, total_cents,
        currency) VALUES ($1, $2, 2, 'confirmed', 200, 'EUR') RETURNING id]], soldout, user.id))

    local requests = {
      { "GET", "/events" }, { "GET", "/events", "q=Show&page=2&size=5" }, { "GET", "/events", "status=draft" },
      { "GET", "/events", "from=2030-01-01T00:00:00Z&to=2030-02-01T00:00:00Z" },
      { "GET", "/events/" .. event }, { "GET", "/users/me", nil, as_user },
      { "GET", "/bookings", nil, as_user }, { "GET", "/bookings", "page=3&size=1", as_user },
      { "GET", "/bookings", "event_id=" .. event, as_admin },
      { "GET", "/bookings", "page=2", as_admin, nil, "GET /bookings (admin, all)" },
      { "GET", "/bookings/" .. booking, nil, as_user }, { "GET", "/waitlist", nil, as_user },
      { "GET", "/waitlist", "page=2&size=1", as_user }, { "GET", "/notifications", nil, as_user },
      { "GET", "/notifications", "page=2&size=1", as_user }, { "GET", "/admin/dead-letters", nil, as_admin },
      { "GET", "/admin/analytics/events/" .. event, nil, as_admin },
      { "GET", "/admin/analytics/summary", nil, as_admin },
      { "POST", "/auth/login", nil, nil, { email = user.email, password = "not the password" } },
      { "POST", "/events/" .. soldout .. "/waitlist", nil, as_waiter, { quantity = 1 } },
      { "DELETE", "/bookings/" .. sold, nil, as_user },
      { "PATCH", "/events/" .. event, nil, as_admin, { capacity = 20 } },
    }
    local seen = recording(function(now_serving)
      for _, r in ipairs(requests) do
        now_serving(r[6] or (r[1] .. " " .. r[2]))
        local headers = r[4] or {}
        headers["content-type"] = r[5] and "application/json" or nil
        local status = app.dispatch({ method = r[1], path = BASE .. r[2], query_string = r[3], headers = headers,
          body = r[5] and json.encode(r[5]) or "", id = "plans", peer = "127.0.0.1" })
        assert(status < 500, r[1] .. " " .. r[2] .. " answered " .. status)
      end
    end)
    assert.is_true(#seen >= #requests, "the statements were not recorded")

    local bad = {}
    local ok, err = pcall(db.transaction, function(tx)
      fill(tx, tag)
      for _, s in ipairs(seen) do
        local head = s.sql:match("^%s*(%a+)")
        if head and ({ SELECT = 1, WITH = 1, UPDATE = 1, DELETE = 1 })[head:upper()] then
          -- Run for real (EXPLAIN ANALYZE, undone by a savepoint): with
          -- these parameters, and as a prepared statement on its sixth
          -- execution, when Postgres may have settled on a generic plan
          -- (evently.db prepares every statement)
          -- (a statement marked "/* custom plan */" is never prepared)
          local modes = s.sql:find("/* custom plan */", 1, true) and { "first" } or { "first", "sixth" }
          for _, mode in ipairs(modes) do
            assert(tx.query("SAVEPOINT plans"))
            local rows
            if mode == "first" then
              rows = assert(tx.query("EXPLAIN (ANALYZE) " .. s.sql, table.unpack(s.args, 1, s.args.n)))
            else
              assert(tx.query("PREPARE plans_stmt AS " .. s.sql))
              local exec = "EXECUTE plans_stmt" .. literals(s.args)
              for _ = 1, 5 do assert(tx.query(exec)) end
              rows = assert(tx.query("EXPLAIN (ANALYZE) " .. exec))
            end
            assert(tx.query("ROLLBACK TO SAVEPOINT plans"))
            if mode == "sixth" then assert(tx.query("DEALLOCATE plans_stmt")) end
            local lines = {}
            for _, r in ipairs(rows) do lines[#lines + 1] = r["QUERY PLAN"] end
            local plan = table.concat(lines, "\n")
            local why = history_read(plan)
            if why and not WHOLE[s.request] then
              bad[#bad + 1] = ("%s (%s execution): %s\n%s\n%s"):format(s.request, mode, why, s.sql, plan)
            end
          end
        end
      end
      error("roll back the filler", 0)
    end)
    assert.are.equal("roll back the filler", err, tostring(ok))
    assert.are.same({}, bad)
  end)
end)
