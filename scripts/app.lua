-- Evently: the ticketing application. One file per resource in routes/, the
-- domain logic in domain/, HTTP helpers in web/, operator rules in rules/.
local app = require "evently.app"

local BASE = "/api/v1"

app.get(BASE, function()
  return { name = "evently", version = "v1" }
end, "api.root")

require "routes.auth" (app, BASE)
require "routes.users" (app, BASE)
require "routes.events" (app, BASE)
require "routes.bookings" (app, BASE)
require "routes.waitlist" (app, BASE)
require "routes.notifications" (app, BASE)
require "routes.ws" (app, BASE)
require "routes.analytics" (app, BASE)
require "routes.dead_letters" (app, BASE)
require "routes.docs" (app)

-- The event stream: the outbox relay (Kafka mode) and the consumers.
require("evently.stream").relay()
require("flows.waitlist").start()
require("flows.notify").start()

-- Old rows go (rules/retention.lua).
require("domain.retention").start()
