-- #pg: evently.inventory on a pool that has nothing to do with tickets (a
-- warehouse's stock, orders as the record), so the engine is shown generic.
-- Invariants are checked against the database after concurrent storms.
local db = require "evently.db"
local time = require "evently.time"
local inventory = require "evently.inventory"

local wait_until = dofile("tests/lua/support.lua").wait_until

-- done()'s count once it reaches n, or whatever it is after `limit` seconds
local function wait_all(n, done, limit)
  wait_until(limit or 20, function() return done() >= n end, 0.01)
  return done()
end

describe("evently.inventory #pg", function()
  local stock, limited
  setup(function()
    assert(db.query("DROP TABLE IF EXISTS spec_orders"))
    assert(db.query("DROP TABLE IF EXISTS spec_stock"))
    assert(db.query([[CREATE TABLE spec_stock (sku bigint PRIMARY KEY, units int NOT NULL,
      free int NOT NULL CHECK (free >= 0 AND free <= units), on_sale bool NOT NULL DEFAULT true,
      per_order int NOT NULL DEFAULT 5, price int NOT NULL DEFAULT 3)]]))
    assert(db.query([[CREATE TABLE spec_orders (id bigserial PRIMARY KEY, sku bigint NOT NULL,
      buyer bigint NOT NULL CHECK (buyer <> 666), n int NOT NULL, cost int NOT NULL)]]))
    local def = {
      name = "spec_stock", table = "spec_stock", key = "sku", available = "free", capacity = "units",
      open = "on_sale", max_claim = "per_order", columns = "price",
      record = [[INSERT INTO spec_orders (id, sku, buyer, n, cost)
        SELECT g.id, $1, g.owner, g.quantity, g.quantity * g.price FROM granted g
        RETURNING id, sku, buyer, n, cost]],
      record_seq = "spec_orders_id_seq",
    }
    stock = inventory.pool(def)
    def.name = "spec_stock_limited"
    def.owner_held = [[SELECT buyer AS owner, sum(n)::int AS held FROM spec_orders
      WHERE sku = $1 AND buyer = ANY($3::bigint[]) GROUP BY buyer]]
    limited = inventory.pool(def)
  end)
  teardown(function()
    db.query("DROP TABLE IF EXISTS spec_orders")
    db.query("DROP TABLE IF EXISTS spec_stock")
    db.query("DELETE FROM inventory_holds WHERE pool LIKE 'spec_%'")
  end)

  local function new_sku(sku, units, extra)
    assert(db.query("DELETE FROM spec_orders WHERE sku = $1", sku))
    assert(db.query("DELETE FROM spec_stock WHERE sku = $1", sku))
    assert(db.query("INSERT INTO spec_stock (sku, units, free) VALUES ($1, $2, $2)", sku, units))
    if extra then assert(db.query("UPDATE spec_stock SET " .. extra .. " WHERE sku = $1", sku)) end
    stock:reopen(sku)
    limited:reopen(sku)
  end

  it("takes one claim and writes the caller's record in the same statement", function()
    new_sku(1, 10)
    local order = assert(stock:take(1, 77, 3))
    assert.are.same({ sku = 1, buyer = 77, n = 3, cost = 9 },
      { sku = order.sku, buyer = order.buyer, n = order.n, cost = order.cost })
    assert.are.equal(7, stock:available(1).available)
  end)

  it("refuses with the reason: too many, not open, no such row", function()
    new_sku(2, 10)
    local r, why, info = stock:take(2, 1, 6)
    assert.is_nil(r); assert.are.equal("too-many", why); assert.are.equal(5, info.max)
    new_sku(3, 10, "on_sale = false")
    r, why = stock:take(3, 1, 1)
    assert.is_nil(r); assert.are.equal("closed", why)
    r, why = stock:take(999999, 1, 1)
    assert.is_nil(r); assert.are.equal("closed", why)
    assert.are.equal(0, db.value("SELECT count(*) FROM spec_orders WHERE sku IN (2, 3)"))
  end)

  it("coalesces 300 concurrent takes of mixed sizes and never oversells", function()
    new_sku(4, 100)
    local before = inventory.core.stats()
    local done, granted, soldout = 0, 0, 0
    for i = 1, 300 do
      time.after(0, function()
        local r, why = stock:take(4, 1000 + i % 40, 1 + i % 3)
        if r then granted = granted + r.n elseif why == "sold-out" then soldout = soldout + 1 end
        done = done + 1
      end)
    end
    assert.are.equal(300, wait_all(300, function() return done end))
    local after = inventory.core.stats()
    assert.are.equal(100, granted) -- the queue is served first come first served until nothing fits
    assert.are.equal(100, db.value("SELECT coalesce(sum(n), 0)::int FROM spec_orders WHERE sku = 4"))
    assert.are.equal(0, stock:available(4).available)
    assert.is_true(soldout > 0)
    -- far fewer statements than claims: that is the point of coalescing
    assert.is_true(after.batches - before.batches < 150, "batches: " .. (after.batches - before.batches))
  end)

  it("answers a sold-out row from the gate until units come back", function()
    new_sku(5, 2)
    assert(stock:take(5, 1, 2))
    local r, why = stock:take(5, 1, 1) -- this batch sees 0 left and closes the gate
    assert.is_nil(r); assert.are.equal("sold-out", why)
    assert.is_true(stock:gate_closed(5, 1))
    assert.is_false(stock:gate_closed(5, 6)) -- above the per-claim bound: the full path answers
    assert.are.equal(1, stock:give_back(db, 5, 1))
    stock:reopen(5)
    assert.is_false(stock:gate_closed(5, 1))
    assert(stock:take(5, 2, 1))
  end)

  it("gives back never above capacity, resizes never below what is taken", function()
    new_sku(6, 10)
    assert(stock:take(6, 1, 4))
    assert.is_nil(stock:give_back(db, 6, 5)) -- 6 free + 5 > 10
    assert.are.equal(10, stock:give_back(db, 6, 4))
    assert(stock:take(6, 1, 4))
    assert.is_nil(stock:resize(db, 6, 3)) -- 4 are taken
    local s = assert(stock:resize(db, 6, 4))
    assert.are.same({ capacity = 4, available = 0 }, s)
    s = assert(stock:resize(db, 6, 20))
    assert.are.same({ capacity = 20, available = 16 }, s)
  end)

  it("holds, confirms once, releases once, and refuses what does not fit", function()
    new_sku(7, 5)
    local h = assert(stock:hold(db, 7, 42, 3, 60))
    assert.are.equal("held", h.state)
    assert.are.equal(2, stock:available(7).available)
    assert.is_nil(stock:hold(db, 7, 43, 3, 60)) -- only 2 left
    assert.is_nil(stock:confirm(db, h.id, 99)) -- not theirs
    local c = assert(stock:confirm(db, h.id, 42))
    assert.are.equal("confirmed", c.state)
    assert.is_nil(stock:confirm(db, h.id, 42))
    assert.is_nil(stock:release(db, h.id)) -- confirmed: nothing to give back
    local h2 = assert(stock:hold(db, 7, 43, 2, 60))
    local rel = assert(stock:release(db, h2.id, 43))
    assert.are.equal(2, rel.available)
    assert.is_nil(stock:release(db, h2.id, 43))
    assert.are.equal(2, stock:available(7).available)
  end)

  it("sweeps an expired hold exactly once under concurrent sweepers, and it cannot be confirmed", function()
    new_sku(8, 10)
    local ids = {}
    for i = 1, 10 do ids[i] = assert(stock:hold(db, 8, 500 + i, 1, 0.05)).id end
    assert.are.equal(0, stock:available(8).available)
    time.sleep(0.2)
    local swept, done = 0, 0
    for _ = 1, 6 do
      time.after(0, function()
        local rows = assert(db.transaction(function(tx) return stock:sweep(tx, 3) end))
        while #rows > 0 do
          swept = swept + #rows
          rows = assert(db.transaction(function(tx) return stock:sweep(tx, 3) end))
        end
        done = done + 1
      end)
    end
    wait_all(6, function() return done end)
    local expired = db.value(
      "SELECT count(*) FROM inventory_holds WHERE pool = 'spec_stock' AND key = 8 AND state = 'expired'")
    assert.are.equal(10, expired)
    assert.are.equal(10, swept)
    assert.are.equal(10, stock:available(8).available) -- every unit back, none twice
    assert.is_nil(stock:confirm(db, ids[1], 501))
  end)

  it("keeps each owner within the limit under concurrent takes", function()
    new_sku(9, 1000)
    local done = 0
    for i = 1, 120 do
      time.after(0, function()
        limited:take(9, 1 + i % 4, 2, { limit = 5 })
        done = done + 1
      end)
    end
    assert.are.equal(120, wait_all(120, function() return done end))
    local rows = assert(db.query("SELECT buyer, sum(n)::int AS n FROM spec_orders WHERE sku = 9 GROUP BY buyer"))
    assert.are.equal(4, #rows)
    for _, r in ipairs(rows) do assert.are.equal(4, r.n) end -- 2 + 2; a third 2 would pass 5
    local r = limited:take(9, 1, 1, { limit = 5 })
    assert(r) -- 4 + 1 = 5 fits
    local why, info
    r, why, info = limited:take(9, 1, 1, { limit = 5 })
    assert.is_nil(r); assert.are.equal("limit-exceeded", why); assert.are.equal(5, info.held)
  end)

  it("runs the same statement inside the caller's transaction (take_in)", function()
    new_sku(10, 3)
    local ok = pcall(db.transaction, function(tx)
      assert(stock:take_in(tx, 10, 1, 2))
      error("roll back")
    end)
    assert.is_false(ok)
    assert.are.equal(3, stock:available(10).available) -- rolled back with the caller
    local order = assert(db.transaction(function(tx) return stock:take_in(tx, 10, 1, 3) end))
    assert.are.equal(3, order.n)
    local r, why = db.transaction(function(tx) return stock:take_in(tx, 10, 1, 1) end)
    assert.is_nil(r); assert.are.equal("sold-out", why)
  end)

  it("withdraws a queued take whose deadline passes before its batch starts: not taken", function()
    new_sku(11, 10)
    -- hold the row lock so the first batch waits; the second claim queues behind it
    local locked, release = false, false
    time.after(0, function()
      db.transaction(function(tx)
        tx.query("SELECT 1 FROM spec_stock WHERE sku = 11 FOR UPDATE")
        locked = true
        while not release do time.sleep(0.01) end
      end)
    end)
    while not locked do time.sleep(0.01) end
    local first, second
    time.after(0, function() first = table.pack(stock:take(11, 1, 1)) end)
    local waiting = 0 -- the first batch is running: its statement waits for the row lock
    for _ = 1, 500 do
      waiting = db.value([[SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
        AND query LIKE '%spec_stock%' AND pid <> pg_backend_pid()]])
      if waiting > 0 then break end
      time.sleep(0.01)
    end
    assert.are.equal(1, waiting)
    time.after(0, function() second = table.pack(stock:take(11, 2, 1, { queue_seconds = 0.2 })) end)
    time.sleep(0.5)
    assert.is_not_nil(second)
    assert.is_nil(second[1]); assert.are.equal("busy", second[2])
    release = true
    wait_all(1, function() return first and 1 or 0 end)
    assert(first[1])
    assert.are.equal(1, db.value("SELECT count(*) FROM spec_orders WHERE sku = 11"))
  end)
  it("gives back only what is taken, never what holds keep (their sweep gives it back)", function()
    new_sku(12, 10)
    assert(stock:hold(db, 12, 1, 2, 60))
    assert.is_nil(stock:give_back(db, 12, 1)) -- nothing is taken: the 2 are held
    assert(stock:take(12, 1, 3))
    assert.is_nil(stock:give_back(db, 12, 4))
    assert.are.equal(8, stock:give_back(db, 12, 3))
  end)

  it("serves a claim with another limit in a later batch, so every claim gets its own", function()
    new_sku(13, 1000)
    local done = 0
    time.after(0, function() limited:take(13, 99, 1); done = done + 1 end)
    for _ = 1, 6 do
      time.after(0, function() limited:take(13, 7, 2, { limit = 3 }); done = done + 1 end)
    end
    assert.are.equal(7, wait_all(7, function() return done end))
    assert.are.equal(2, db.value("SELECT coalesce(sum(n), 0)::int FROM spec_orders WHERE sku = 13 AND buyer = 7"))
    assert.are.equal(1, db.value("SELECT coalesce(sum(n), 0)::int FROM spec_orders WHERE sku = 13 AND buyer = 99"))
  end)

  it("refuses a take from a caller that cannot wait, and takes nothing for it", function()
    new_sku(14, 10)
    local ok, err = pcall(table.sort, { 1, 2 }, function() stock:take(14, 5, 1); return false end)
    assert.is_false(ok)
    assert.matches("coroutine", tostring(err))
    time.sleep(0.2)
    assert.are.equal(10, stock:available(14).available)
    assert.are.equal(0, db.value("SELECT count(*) FROM spec_orders WHERE sku = 14"))
  end)

  it("fails only the claim whose record is refused: the others of its batch go again alone", function()
    new_sku(15, 100)
    local got, done = {}, 0
    for _, buyer in ipairs { 1, 2, 666, 3, 4 } do
      time.after(0, function()
        got[buyer] = table.pack(stock:take(15, buyer, 1))
        done = done + 1
      end)
    end
    assert.are.equal(5, wait_all(5, function() return done end))
    for _, buyer in ipairs { 1, 2, 3, 4 } do assert(got[buyer][1], "buyer " .. buyer) end
    assert.is_nil(got[666][1])
    assert.are.equal("23514", got[666][2].sqlstate)
    assert.are.equal(4, db.value("SELECT count(*) FROM spec_orders WHERE sku = 15"))
    assert.are.equal(96, stock:available(15).available)
  end)

  it("keeps a bounded state per row: idle rows are dropped once many were seen", function()
    assert(db.query("DELETE FROM spec_stock WHERE sku >= 100000"))
    assert(db.query("INSERT INTO spec_stock (sku, units, free) SELECT g, 1, 1 FROM generate_series(100000, 101199) g"))
    for i = 0, 1199 do assert(stock:take(100000 + i, 1, 1)) end -- one after the other: the pool is small here
    assert.are.equal(1200, db.value("SELECT count(*) FROM spec_orders WHERE sku >= 100000"))
    local rows = inventory.core.stats().rows
    assert.is_true(rows <= 1024 + 20, "rows kept: " .. rows)
  end)

  it("hands each claim's tag to the statement: after-statements write per-claim rows atomically", function()
    assert(db.query("CREATE TABLE IF NOT EXISTS spec_tags (order_id bigint, tag text)"))
    local tagged = inventory.pool {
      name = "spec_stock_tagged", table = "spec_stock", key = "sku", available = "free", capacity = "units",
      columns = "price",
      record = [[INSERT INTO spec_orders (id, sku, buyer, n, cost)
        SELECT g.id, $1, g.owner, g.quantity, 0 FROM granted g RETURNING id, buyer]],
      record_seq = "spec_orders_id_seq",
      after = { "INSERT INTO spec_tags (order_id, tag) SELECT g.id, g.tag FROM granted g WHERE g.tag IS NOT NULL",
                "SELECT 1 FROM recorded" },
    }
    new_sku(16, 10)
    local weird = [[q"uo\te,{x}]]
    local done, ids = 0, {}
    for i, tag in ipairs { "a", weird, false, "d" } do
      time.after(0, function()
        ids[i] = assert(tagged:take(16, i, 1, { tag = tag or nil })).id
        done = done + 1
      end)
    end
    assert.are.equal(4, wait_all(4, function() return done end))
    local rows = assert(db.query(
      "SELECT order_id, tag FROM spec_tags WHERE order_id = ANY($1::bigint[]) ORDER BY order_id",
      "{" .. table.concat(ids, ",") .. "}"))
    local by = {}
    for _, r in ipairs(rows) do by[r.order_id] = r.tag end
    assert.are.same({ [ids[1]] = "a", [ids[2]] = weird, [ids[4]] = "d" }, by)
    -- the same in a transaction (take_in)
    local r = assert(db.transaction(function(tx) return tagged:take_in(tx, 16, 9, 1, nil, weird) end))
    assert.are.equal(weird, db.value("SELECT tag FROM spec_tags WHERE order_id = $1", r.id))
    db.query("DROP TABLE spec_tags")
  end)

  -- Found by the soak: a sold-out row whose units come back while a take
  -- waits for its lock. The statement's snapshot still has 0; the UPDATE's
  -- first candidate row was computed from that stale version and failed the
  -- CHECK (free >= 0) before Postgres rechecked it against the locked one.
  -- The new value now comes from the locked row the walk itself read.
  it("takes units given back while the take waited for the row lock (no CHECK failure)", function()
    new_sku(17, 2)
    assert(stock:take(17, 1, 2)) -- sold out: free = 0
    stock:reopen(17)
    local taking, result = false, nil
    local ok, err = db.transaction(function(tx)
      assert(tx.query("UPDATE spec_stock SET free = free + 1 WHERE sku = 17")) -- not committed yet
      time.after(0, function()
        taking = true
        result = table.pack(stock:take(17, 2, 1)) -- its snapshot: free = 0; it waits for our lock
      end)
      assert(wait_until(2, function() return taking end), "the take never started")
      time.sleep(0.2) -- the take's statement is waiting on the row lock now
      return true
    end)
    assert(ok, err)
    assert(wait_until(5, function() return result end), "the take never answered")
    local order, why = result[1], result[2]
    assert.is_table(order, "the take failed: " .. tostring(why))
    assert.are.equal(2, order.buyer)
    assert.are.equal(0, stock:available(17).available)
  end)
end)
