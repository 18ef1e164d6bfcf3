-- wrk script for tests/load/soak.sh: a mixed on-sale workload at a steady pace.
-- Each connection waits an exponential time of mean DELAY_MS between requests
-- and picks one of: browse the list (30 %), one event (25 %), book a seat of
-- a random event (20 %), cancel one of its own bookings (10 %), join a
-- waitlist (5 %), turn a waitlist entry it joined into a booking (3 %: an
-- entry is tried again later, up to 20 times, since an offer comes only when
-- seats of a sold-out event are given back), read its own bookings (7 %).
-- Users (TOKENS) in turn;
-- events EVENTS (a file of ids); cancellations as the admin (ADMIN, a token):
-- wrk's response() cannot tell which request it answers, so a booking is
-- recognised by its body. Prints p50/p99 and how many requests failed: a 5xx
-- answer, or a socket error or timeout (none is expected at this load).
local tokens, events = {}, {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
for line in io.lines(os.getenv("EVENTS")) do events[#events + 1] = line end
local owner, count = {}, 0 -- user id -> that user's token index
for line in io.lines(os.getenv("UIDS")) do count = count + 1; owner[line] = count end
local pause = tonumber(os.getenv("DELAY_MS") or "20")
math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))

local n, booked, joined = 0, {}, {}
local admin = { ["Authorization"] = "Bearer " .. os.getenv("ADMIN") }
local function auth(i) return { ["Authorization"] = "Bearer " .. tokens[i], ["Content-Type"] = "application/json" } end

delay = function() return math.floor(-pause * math.log(1 - math.random()) + 0.5) end

request = function()
  n = n + 1
  local who = (n % #tokens) + 1
  local ev = events[math.random(#events)]
  local r = math.random(100)
  if r <= 30 then
    return wrk.format("GET", "/api/v1/events?page=" .. math.random(3) .. "&size=20")
  elseif r <= 55 then
    return wrk.format("GET", "/api/v1/events/" .. ev)
  elseif r <= 75 then
    return wrk.format("POST", "/api/v1/bookings", auth(who), '{"event_id": ' .. ev .. ', "quantity": 1}')
  elseif r <= 85 and #booked > 0 then
    local i = math.random(#booked)
    local id = booked[i]
    booked[i] = booked[#booked]; booked[#booked] = nil
    return wrk.format("DELETE", "/api/v1/bookings/" .. id, admin)
  elseif r <= 90 then
    return wrk.format("POST", "/api/v1/events/" .. ev .. "/waitlist", auth(who), '{"quantity": 1}')
  elseif r <= 93 and #joined > 0 then
    local e = table.remove(joined, 1)
    e.tries = e.tries + 1
    if e.tries < 20 then joined[#joined + 1] = e end
    local body = ('{"event_id": %s, "quantity": 1, "waitlist_entry_id": %s}'):format(e.event, e.id)
    return wrk.format("POST", "/api/v1/bookings", auth(e.who), body)
  end
  return wrk.format("GET", "/api/v1/bookings?size=10", auth(who))
end

local failed = 0 -- this thread's 5xx answers (read by done() through the thread)

response = function(status, _, body)
  if status >= 500 then
    failed = failed + 1
    wrk.thread:set("failed", failed)
    wrk.thread:set("last_failed", status .. " " .. body:sub(1, 300))
  end
  if status == 201 and body:find('"total_cents"', 1, true) then -- a booking, not a waitlist entry
    local id = body:match('"id":%s*(%d+)')
    if id and #booked < 5000 then booked[#booked + 1] = id end
  elseif status == 201 and body:find('"position"', 1, true) then -- a waitlist entry: whose is in its body
    local id, ev, uid = body:match('"id":%s*(%d+)'), body:match('"event_id":%s*(%d+)'), body:match('"user_id":%s*(%d+)')
    local who = uid and owner[uid]
    if id and ev and who and #joined < 5000 then joined[#joined + 1] = { id = id, event = ev, who = who, tries = 0 } end
  end
end

local threads = {}
setup = function(thread) threads[#threads + 1] = thread end

done = function(summary, latency)
  io.write(string.format("p50_ms %.2f\np99_ms %.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  local e = summary.errors
  local socket = e.connect + e.read + e.write + e.timeout
  local answers = 0
  for _, t in ipairs(threads) do
    answers = answers + (tonumber(t:get("failed")) or 0)
    if t:get("last_failed") then io.write("last_failed ", t:get("last_failed"), "\n") end
  end
  io.write(string.format("failed %d (5xx %d, connect %d, read %d, write %d, timeout %d)\n", answers + socket,
    answers, e.connect, e.read, e.write, e.timeout))
end
