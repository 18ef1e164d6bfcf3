-- Helpers shared by the specs. Not a spec itself (busted runs *_spec.lua).
-- The specs run from the repository root, as `evently test` does, and load
-- this with: local support = dofile("tests/lua/support.lua")
local time = require "evently.time"

local M = {}

--- fn()'s first truthy value, asking every `interval` seconds (default
-- 0.02) for up to `seconds`; nil when none came by then. Sleeps (yields)
-- between calls, so the event loop runs what the spec waits for.
function M.wait_until(seconds, fn, interval)
  local deadline = time.monotonic() + seconds
  repeat
    local v = fn()
    if v then return v end
    time.sleep(interval or 0.02)
  until time.monotonic() > deadline
end

return M
