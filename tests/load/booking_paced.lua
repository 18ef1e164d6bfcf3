-- wrk script: booking.lua at a pace: each connection waits DELAY_MS between
-- its requests, so 32 connections offer about 32 * 1000 / DELAY_MS bookings/s
-- (a load the system carries, for latencies that are not queueing at saturation).
-- Run from the repository root (wrk resolves the path from there).
dofile("tests/load/booking.lua")

local pause = tonumber(os.getenv("DELAY_MS") or "40")
delay = function() return pause end
