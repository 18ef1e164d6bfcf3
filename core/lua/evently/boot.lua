--- evently.boot: what a worker loads, in order: operations routes, plugins
-- (priority order), then the app's <scripts>/app.lua. `evently check` and a
-- reload run exactly this, so a script that loads here will load in a worker.
local runtime = require "evently.runtime"

local M = {}

function M.load()
  local cfg = runtime.config()
  require("evently.ops").install()
  require("evently.plugins").load(cfg.plugins_dir, cfg.plugins)
  local path = cfg.scripts .. "/app.lua"
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  chunk()
  if runtime.worker().slot >= 0 then require("evently.db.core").warm() end
end

return M
