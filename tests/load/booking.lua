-- wrk script: POST /api/v1/bookings for one event, as many users (tokens from
-- the file named by TOKENS), one seat each; IDEMPOTENT=1 adds a key to each.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local body = '{"event_id": ' .. os.getenv("EVENT_ID") .. ', "quantity": 1}'
local n = 0

-- IDEMPOTENT=1: every request carries its own Idempotency-Key (unique per
-- wrk thread: each has its own Lua state, named by a table's address)
local keyed = os.getenv("IDEMPOTENT") == "1"
local prefix = tostring({}):match("0x(%x+)") or tostring(os.time())

request = function()
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1],
  }
  if keyed then headers["Idempotency-Key"] = prefix .. "-" .. n end
  return wrk.format("POST", "/api/v1/bookings", headers, body)
end

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(_, latency)
  io.write(string.format("p50_ms %.2f\np99_ms %.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
