-- The smallest Evently app: one JSON route. Run it with
--   EVENTLY_SCRIPTS=examples/hello build/evently serve
local app = require "evently.app"

app.get("/hello", function()
  return { message = "hello, world" }
end)

app.get("/hello/:name", function(req)
  return { message = "hello, " .. req.params.name }
end)
