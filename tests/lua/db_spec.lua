-- #pg: runs against the Postgres that `evently test` provides (embedded or
-- EVENTLY_DATABASE_URL). .ci/test runs it with a pool of 4 and a 300 ms
-- acquire timeout so exhaustion is quick to show.
local db = require "evently.db"
local time = require "evently.time"
local runtime = require "evently.runtime"

describe("evently.db #pg", function()
  setup(function()
    assert(db.query("DROP TABLE IF EXISTS spec_items"))
    assert(db.query([[CREATE TABLE spec_items (id serial PRIMARY KEY, name text UNIQUE NOT NULL,
      qty int NOT NULL DEFAULT 0 CHECK (qty >= 0), meta jsonb, at timestamptz DEFAULT now())]]))
  end)
  teardown(function() db.query("DROP TABLE IF EXISTS spec_items") end)

  it("maps column types to Lua values", function()
    local row = assert(db.one([[SELECT 1::int2 AS a, 2::int4 AS b, 3000000000::int8 AS c, 1.5::float8 AS f,
      12.30::numeric AS n, true AS t, NULL::text AS z, '{"k":[1,2]}'::jsonb AS j,
      '2026-01-02 03:04:05.5+00'::timestamptz AS ts, 'héllo' AS s]]))
    assert.are.equal(1, row.a); assert.is_true(math.type(row.a) == "integer")
    assert.are.equal(3000000000, row.c)
    assert.are.equal(1.5, row.f)
    assert.are.equal("12.30", row.n)
    assert.is_true(row.t)
    assert.are.equal(db.null, row.z)
    assert.are.same({ k = { 1, 2 } }, row.j)
    assert.are.equal("integer", math.type(row.j.k[1])) -- json numbers come back as integers
    assert.are.equal("2026-01-02T03:04:05.5Z", row.ts)
    assert.are.equal("héllo", row.s)
  end)

  it("sends parameters of every kind, never as SQL text", function()
    local evil = "x'); DROP TABLE spec_items; --"
    local rows = assert(db.query("INSERT INTO spec_items (name, qty, meta) VALUES ($1, $2, $3) RETURNING id",
      evil, 7, { tags = { "a" } }))
    assert.are.equal(1, rows.affected)
    local row = assert(db.one("SELECT name, qty, meta FROM spec_items WHERE id = $1", rows[1].id))
    assert.are.equal(evil, row.name)
    assert.are.equal(7, row.qty)
    assert.are.same({ tags = { "a" } }, row.meta)
    assert.are.equal(2, db.value("SELECT $1::int + $2::int", 1, 1))
    assert.is_true(db.value("SELECT $1::bool", true))
    assert.are.equal(db.null, db.value("SELECT $1::text", nil))
  end)

  it("returns nil and a structured error with SQLSTATE and constraint", function()
    assert(db.query("INSERT INTO spec_items (name) VALUES ('dup')"))
    local rows, err = db.query("INSERT INTO spec_items (name) VALUES ('dup')")
    assert.is_nil(rows)
    assert.are.equal("sql", err.kind)
    assert.are.equal("23505", err.sqlstate)
    assert.are.equal("spec_items_name_key", err.constraint)
    assert.truthy(tostring(err):find("^sql: "))
  end)

  it("reports affected rows for UPDATE and DELETE", function()
    assert(db.query("INSERT INTO spec_items (name, qty) VALUES ('u1', 1), ('u2', 1)"))
    local r = assert(db.query("UPDATE spec_items SET qty = qty + 1 WHERE name LIKE 'u%'"))
    assert.are.equal(2, r.affected)
    r = assert(db.query("DELETE FROM spec_items WHERE name = 'nobody'"))
    assert.are.equal(0, r.affected)
  end)

  it("commits a transaction on return and gives back fn's results", function()
    local a, b = db.transaction(function(tx)
      assert(tx.query("INSERT INTO spec_items (name, qty) VALUES ('tx1', 5)"))
      return tx.value("SELECT qty FROM spec_items WHERE name = 'tx1'"), "second"
    end)
    assert.are.equal(5, a); assert.are.equal("second", b)
    assert.are.equal(5, db.value("SELECT qty FROM spec_items WHERE name = 'tx1'"))
  end)

  it("rolls back on error, raises it again, and leaves no connection stuck", function()
    local before = db.stats()
    local ok, err = pcall(db.transaction, function(tx)
      assert(tx.query("INSERT INTO spec_items (name) VALUES ('rolled')"))
      error("changed my mind")
    end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("changed my mind"))
    assert.are.equal(0, db.value("SELECT count(*) FROM spec_items WHERE name = 'rolled'"))
    local after = db.stats()
    assert.are.equal(0, after.busy)
    assert.is_true(after.total <= before.max)
    -- every pooled connection is usable and outside a transaction
    for _ = 1, after.max + 2 do assert.are.equal(1, db.value("SELECT 1")) end
  end)

  it("a failed statement inside a transaction rolls the whole transaction back", function()
    local ok = pcall(db.transaction, function(tx)
      assert(tx.query("INSERT INTO spec_items (name) VALUES ('half')"))
      assert(tx.query("INSERT INTO spec_items (name, qty) VALUES ('neg', -1)")) -- CHECK fails
    end)
    assert.is_false(ok)
    assert.are.equal(0, db.value("SELECT count(*) FROM spec_items WHERE name IN ('half', 'neg')"))
  end)

  it("retries a transaction on serialization failure when asked", function()
    assert(db.query("INSERT INTO spec_items (name, qty) VALUES ('ser', 0)"))
    local attempts = 0
    local v = db.transaction(function(tx)
      attempts = attempts + 1
      if attempts == 1 then
        local e = { kind = "sql", sqlstate = "40001", message = "could not serialize" }
        error(e)
      end
      assert(tx.query("UPDATE spec_items SET qty = qty + 1 WHERE name = 'ser'"))
      return tx.value("SELECT qty FROM spec_items WHERE name = 'ser'")
    end, { retries = 2, isolation = "serializable" })
    assert.are.equal(2, attempts)
    assert.are.equal(1, v)
  end)

  it("answers pool exhaustion with a timely timeout error, not a hang", function()
    local max = db.stats().max
    local held = {}
    local core = require "evently.db.core"
    for i = 1, max do held[i] = assert(core.acquire()) end
    local t0 = time.monotonic()
    local rows, err = db.query("SELECT 1")
    local waited = time.monotonic() - t0
    assert.is_nil(rows)
    assert.are.equal("timeout", err.kind)
    assert.is_true(waited < 3, "waited " .. waited)
    for _, c in ipairs(held) do c:release() end
    assert.are.equal(1, db.value("SELECT 1"))
  end)

  it("serves concurrent coroutines from the pool in arrival order", function()
    local done, order = 0, {}
    for i = 1, 20 do
      time.after(0, function()
        assert(db.value("SELECT pg_sleep(0.01)::text || $1", i))
        order[#order + 1] = i
        done = done + 1
      end)
    end
    local deadline = time.monotonic() + 10
    while done < 20 and time.monotonic() < deadline do time.sleep(0.01) end
    assert.are.equal(20, done)
  end)

  it("delivers NOTIFY to a listener", function()
    local got
    db.listen("spec_channel", function(payload) got = payload end)
    local deadline = time.monotonic() + 5
    -- the listener connects asynchronously: notify until it hears one
    while not got and time.monotonic() < deadline do
      assert(db.query("SELECT pg_notify('spec_channel', 'hello')"))
      time.sleep(0.05)
    end
    assert.are.equal("hello", got)
  end)

  it("routes replica queries to the primary when no replica is configured", function()
    assert.is_nil(runtime.config().replica_url, "this spec expects no EVENTLY_REPLICA_URL")
    -- the query is counted by the primary pool: no other pool served it
    local before = db.stats("primary").queries
    assert.are.equal(1, db.replica.value("SELECT 1"))
    assert.are.equal(before + 1, db.stats("primary").queries)
    -- and it reads the primary's own data
    assert(db.query("INSERT INTO spec_items (name) VALUES ('via-primary')"))
    assert.are.equal(1, db.replica.value("SELECT count(*) FROM spec_items WHERE name = 'via-primary'"))
  end)

  -- The replica URL is read at start-up, so a child `evently lua` gets one: the
  -- primary's server, but another database. Whichever server answers, only a
  -- query that went through the replica URL reports that database's name.
  it("routes replica queries to EVENTLY_REPLICA_URL when one is configured", function()
    local cfg = runtime.config()
    local primary_db = assert(db.value("SELECT current_database()"))
    local replica_db = primary_db == "postgres" and "template1" or "postgres"
    local url = cfg.database_url
    local replica_url
    if url:match("^postgres[ql]*://") then
      local base, query = url:match("^([^?]*)(.*)$")
      replica_url = base:gsub("^(postgres[ql]*://[^/]*).*$", "%1") .. "/" .. replica_db .. query
    else
      replica_url = url .. " dbname=" .. replica_db -- a later keyword overrides an earlier one
    end
    local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local db = require "evently.db"
      print("primary=" .. assert(db.value("SELECT current_database()")))
      print("replica=" .. assert(db.replica.value("SELECT current_database()")))
      print("replica_pool_queries=" .. db.stats("replica").queries)
    ]])
    f:close()
    local out = {}
    local p = assert(io.popen(table.concat({
      "EVENTLY_DATABASE_URL=" .. q(url),
      "EVENTLY_REPLICA_URL=" .. q(replica_url),
      "EVENTLY_REDIS_URL=" .. q(cfg.redis_url),
      "EVENTLY_HOME=" .. q(cfg.home),
      '"$(readlink /proc/$PPID/exe)" lua', q(script), "2>&1",
    }, " ")))
    for line in p:lines() do
      local k, v = line:match("^([%w_]+)=(.*)$")
      if k then out[k] = v end
      out[#out + 1] = line
    end
    local ok = p:close()
    os.remove(script)
    local log = table.concat(out, "\n")
    assert.is_true(ok == true, "evently lua failed:\n" .. log)
    assert.are.equal(primary_db, out.primary, log)
    assert.are.equal(replica_db, out.replica, log)
    assert.are.equal("1", out.replica_pool_queries, log)
  end)
end)
