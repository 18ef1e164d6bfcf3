-- Evently: the ticketing application. Routes live one file per resource in
-- scripts/routes/; this file only wires them up.
local app = require "evently.app"

app.get("/api/v1", function()
  return { name = "evently", version = "v1" }
end)
