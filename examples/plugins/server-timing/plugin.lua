-- server-timing: adds a Server-Timing header with the time the app spent on
-- each request. Enable with EVENTLY_PLUGINS_DIR=examples/plugins
-- EVENTLY_PLUGINS=server-timing.
local time = require "evently.time"

local started = setmetatable({}, { __mode = "k" }) -- req -> start, forgotten with the request

return {
  version = "1.0",
  priority = 1000,
  hooks = {
    request = function(req)
      started[req] = time.monotonic()
    end,
    response = function(ctx)
      local t0 = started[ctx.req]
      if not t0 then return end
      local headers = {}
      for k, v in pairs(ctx.headers) do headers[k] = v end -- may be a shared constant table
      headers["Server-Timing"] = string.format("app;dur=%.3f", (time.monotonic() - t0) * 1000)
      ctx.headers = headers
    end,
  },
}
