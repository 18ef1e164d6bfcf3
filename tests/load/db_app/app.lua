-- Benchmark app: one Postgres query per request.
local app = require "evently.app"
local db = require "evently.db"

app.get("/db", function()
  local v, err = db.value("SELECT $1::int + 1 AS v", 41)
  if err then return 503, { error = tostring(err) } end
  return { value = v }
end)
