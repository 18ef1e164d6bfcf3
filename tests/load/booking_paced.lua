-- wrk script: booking.lua at a pace: each connection waits DELAY_MS between
-- its requests, so 32 connections offer about 32 * 1000 / DELAY_MS bookings/s
-- (a load the system carries, for latencies that are not queueing at saturation).
-- POISSON=1: the wait is drawn from an exponential distribution of mean
-- DELAY_MS, so arrivals are random as real clients' are, not waves of every
-- connection at once (wrk starts them all together).
-- Run from the repository root (wrk resolves the path from there).
dofile("tests/load/booking.lua")

local pause = tonumber(os.getenv("DELAY_MS") or "40")
if os.getenv("POISSON") == "1" then
  math.randomseed(os.time() + math.floor(os.clock() * 1e6) + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
  delay = function() return math.floor(-pause * math.log(1 - math.random()) + 0.5) end
else
  delay = function() return pause end
end
