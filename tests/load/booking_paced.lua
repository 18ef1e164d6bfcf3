-- wrk script: booking.lua at a pace: each connection waits DELAY_MS between
-- its requests, so 32 connections offer about 32 * 1000 / DELAY_MS bookings/s
-- (a load the system carries, for latencies that are not queueing at saturation).
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local body = '{"event_id": ' .. os.getenv("EVENT_ID") .. ', "quantity": 1}'
local pause = tonumber(os.getenv("DELAY_MS") or "40")
local n = 0

request = function()
  n = n + 1
  return wrk.format("POST", "/api/v1/bookings", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1],
  }, body)
end

delay = function() return pause end

done = function(summary, latency)
  io.write(string.format("p50_ms %.2f\np99_ms %.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
