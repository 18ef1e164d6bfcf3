-- GET /openapi.json (the document in scripts/openapi.lua) and GET /docs
-- (Swagger UI from npm's swagger-ui-dist, installed by .ci/setup under
-- build/web; EVENTLY_DOCS_DIR points elsewhere).
local json = require "evently.json"
local problem = require "evently.problem"
local runtime = require "evently.runtime"

local DOC = assert(json.encode(require "openapi"))
local DIR = os.getenv("EVENTLY_DOCS_DIR") or (runtime.config().scripts .. "/../build/web/node_modules/swagger-ui-dist")
local FILES = { -- the few files the page needs, and their types
  ["swagger-ui.css"] = "text/css; charset=utf-8",
  ["swagger-ui-bundle.js"] = "application/javascript; charset=utf-8",
  ["swagger-ui-standalone-preset.js"] = "application/javascript; charset=utf-8",
  ["favicon-32x32.png"] = "image/png",
}
local loaded = {} -- file contents, read once per worker

local PAGE = [[<!doctype html>
<html><head><meta charset="utf-8"><title>Evently API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"><link rel="icon" href="/docs/favicon-32x32.png"></head>
<body><div id="ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"});</script>
</body></html>]]

local function read(name)
  if loaded[name] == nil then
    local f = io.open(DIR .. "/" .. name, "rb")
    loaded[name] = f and f:read("a") or false
    if f then f:close() end
  end
  return loaded[name]
end

return function(app)
  app.get("/openapi.json", function()
    return 200, DOC, { ["Content-Type"] = "application/json" }
  end, "openapi")

  app.get("/docs", function()
    if not read("swagger-ui-bundle.js") then
      return problem.response(503, "docs-not-installed",
        "Swagger UI is not installed: run .ci/setup (npm swagger-ui-dist)")
    end
    return 200, PAGE, { ["Content-Type"] = "text/html; charset=utf-8" }
  end, "docs")

  app.get("/docs/:file", function(req)
    local ctype = FILES[req.params.file]
    local data = ctype and read(req.params.file)
    if not data then return problem.response(404, "not-found", "no such file") end
    return 200, data, { ["Content-Type"] = ctype, ["Cache-Control"] = "public, max-age=86400" }
  end, "docs.file")
end
