-- Runs busted inside the evently runtime (`evently test [paths]`): specs are
-- in a coroutine on the event loop, so they may call every platform API,
-- yielding ones included. busted reads its options from the global arg.
-- busted ends with os.exit(); here that becomes an ordinary return, so the
-- command can stop the embedded services it started before exiting.
local EXIT = {}
local code = 0
local real_exit = os.exit
os.exit = function(c) -- luacheck: ignore 122 (busted calls os.exit; we must not)
  code = (c == nil or c == true or c == 0) and 0 or 1
  error(EXIT, 0)
end
local ok, err = pcall(require "busted.runner", { standalone = false })
os.exit = real_exit -- luacheck: ignore 122
if not ok and err ~= EXIT then error(err, 0) end
if code ~= 0 then error("specs failed", 0) end
