-- wrk script: GET $PATH_TO (its query included), with the bearer tokens of the
-- file named by TOKENS in turn when it is set; prints p50/p99 and non-200s.
local tokens = {}
if os.getenv("TOKENS") then
  for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
end
local path = os.getenv("PATH_TO")
local n = 0

request = function()
  n = n + 1
  local headers = {}
  if #tokens > 0 then headers["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1] end
  return wrk.format("GET", path, headers)
end

done = function(_, latency)
  io.write(string.format("p50_ms %.2f\np99_ms %.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
