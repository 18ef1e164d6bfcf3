-- Test app for the data layer: Postgres pool, transactions, cache.
local app = require "evently.app"
local db = require "evently.db"
local cache = require "evently.cache"
local problem = require "evently.problem"

local function unavailable(err)
  local status = (err.kind == "timeout" or err.kind == "unavailable" or err.kind == "closed") and 503 or 500
  return problem.response(status, "db-" .. err.kind, tostring(err))
end

local function ensure_table()
  return db.query([[CREATE TABLE IF NOT EXISTS data_items (id int PRIMARY KEY, name text NOT NULL)]])
end

app.get("/db/value", function(req)
  local v, err = db.value("SELECT $1::int + 1 AS v", tonumber(req.query.n or "0"))
  if err then return unavailable(err) end
  return { value = v, pid = require("evently.runtime").worker().pid }
end)

app.get("/db/sleep", function(req)
  local _, err = db.value("SELECT pg_sleep($1::float8)::text AS v", tonumber(req.query.s or "0.1"))
  if err then return unavailable(err) end
  return { slept = true }
end)

app.post("/db/tx-error", function()
  local ok = pcall(db.transaction, function(tx)
    assert(tx.query("SELECT 1"))
    error("fail inside the transaction")
  end)
  return { rolled_back = not ok }
end)

app.get("/db/pool", function()
  return db.stats()
end)

app.put("/items/:id", function(req)
  assert(ensure_table())
  local id = tonumber(req.params.id)
  local rows, err = db.query([[INSERT INTO data_items (id, name) VALUES ($1, $2)
    ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name]], id, req.json.name)
  if not rows then return unavailable(err) end
  cache.invalidate("item:" .. id)
  return { id = id, name = req.json.name }
end)

app.get("/items/:id", function(req)
  local id = tonumber(req.params.id)
  local loads = 0
  local item, err = cache.fetch("item:" .. id, 300, function()
    loads = loads + 1
    local row, lerr = db.one("SELECT id, name FROM data_items WHERE id = $1", id)
    if lerr then return nil, lerr end
    return row or false
  end)
  if err then return unavailable(err) end
  if not item then return problem.response(404, "not-found", "no item " .. id) end
  return 200, { id = item.id, name = item.name, loaded = loads > 0 },
    { ["X-Worker"] = tostring(require("evently.runtime").worker().pid) }
end)

app.get("/cache/stats", function() return cache.stats() end)
