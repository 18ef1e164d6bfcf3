--- evently.ops: operations endpoints, outside /api/v1.
--   GET /health        liveness
--   GET /health/ready  200 when Postgres and Redis answer, else 503 (Kafka's
--                      state is reported; without it the outbox buffers)
--   GET /metrics       Prometheus text exposition
-- With ops_listen set (EVENTLY_OPS_LISTEN), /metrics and the detailed
-- readiness (states, details, pool figures) are served only there; the public
-- listener's /health/ready says {"status": "ready"} or {"status":
-- "not-ready"} and nothing else (no hosts, users or error texts), and its
-- /metrics is 404.
local app = require "evently.app"
local problem = require "evently.problem"
local runtime = require "evently.runtime"

local M = {}

function M.install()
  local split = runtime.config().ops_listen ~= nil
  local function private(req) return not split or req.listener == "ops" end

  app.get("/health", function() return { status = "up" } end, "/health")

  app.get("/health/ready", function(req)
    local components, ready = {}, true
    for name, c in pairs(runtime.components()) do
      components[name] = c
      -- Kafka away is degraded, not unready: bookings go on and their events
      -- wait in the outbox until the relay can publish them
      if c.state ~= "up" and c.state ~= "not_configured" and name ~= "kafka" then ready = false end
    end
    if not private(req) then return ready and 200 or 503, { status = ready and "ready" or "not-ready" } end
    -- this worker's own pool, as the requests it serves see it
    components.postgres.pool = require("evently.db").stats()
    components.redis.client = require("evently.redis").stats()
    return ready and 200 or 503, { status = ready and "ready" or "not_ready", components = components }
  end, "/health/ready")

  app.get("/metrics", function(req)
    if not private(req) then return problem.response(404, "not-found", "no route for /metrics") end
    -- in-process consumer lag comes from the database; Kafka lag is in the process figures
    local ok, lag = pcall(require("evently.stream").metrics_text)
    return 200, runtime.metrics_text() .. (ok and lag or ""), { ["Content-Type"] = "text/plain; version=0.0.4" }
  end, "/metrics")

  for _, name in ipairs({ "/health", "/health/ready", "/metrics" }) do app.operations[name] = true end
end

return M
