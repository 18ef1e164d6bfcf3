-- wrk script: one fixed POST /api/v1/bookings (first token of TOKENS) with no
-- per-request Lua in wrk, so the load generator takes less of the shared CPU.
local token = io.lines(os.getenv("TOKENS"))()
wrk.method = "POST"
wrk.path = "/api/v1/bookings"
wrk.body = '{"event_id": ' .. os.getenv("EVENT_ID") .. ', "quantity": 1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token

done = function(_, latency)
  io.write(string.format("p50_ms %.2f\np99_ms %.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
