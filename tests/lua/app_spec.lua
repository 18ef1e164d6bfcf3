local app = require "evently.app"
local hooks = require "evently.hooks"
local problem = require "evently.problem"
local time = require "evently.time"
local cjson = require "cjson"

local function request(method, path, opts)
  opts = opts or {}
  return { method = method, path = path, query_string = opts.query, headers = opts.headers or {},
           body = opts.body or "", id = "spec-1", peer = "127.0.0.1" }
end

describe("evently.app dispatch", function()
  before_each(function()
    app.reset(); hooks.clear()
    app.get("/things/:id", function(req) return { id = req.params.id, q = req.query } end)
    app.post("/things", function(req) return 201, { got = req.json } end)
    app.get("/slow", function() time.sleep(0.01); return "done" end)
    app.get("/boom", function() error("secret internals") end)
    app.get("/conflict", function() problem.raise(409, "sold-out", "no seats", { available = 0 }) end)
    app.get("/empty", function() return 204 end)
    app.get("/custom", function() return 202, "x", { ["X-Thing"] = "1" } end)
  end)
  after_each(function() app.reset(); hooks.clear() end)

  it("answers a table as JSON with params and decoded query", function()
    local s, h, body, route = app.dispatch(request("GET", "/things/42", { query = "a=1&b=x%20y&c" }))
    assert.are.equal(200, s)
    assert.are.equal("application/json", h["Content-Type"])
    assert.are.same({ id = "42", q = { a = "1", b = "x y", c = "" } }, cjson.decode(body))
    assert.are.equal("/things/:id", route)
  end)

  it("decodes a JSON body and honours the returned status", function()
    local s, _, body = app.dispatch(request("POST", "/things",
      { headers = { ["content-type"] = "application/json" }, body = '{"n":1}' }))
    assert.are.equal(201, s)
    assert.are.same({ got = { n = 1 } }, cjson.decode(body))
  end)

  it("answers a JSON body whose strings are not UTF-8 with a 422 naming the field", function()
    local s, h, body = app.dispatch(request("POST", "/things",
      { headers = { ["content-type"] = "application/json" }, body = '{"n": 1, "name": "\255"}' }))
    assert.are.equal(422, s)
    assert.are.equal("application/problem+json", h["Content-Type"])
    local doc = cjson.decode(body)
    assert.are.equal("https://evently.dev/problems/validation", doc.type)
    assert.are.same({ { field = "name", message = "must be valid UTF-8" } }, doc.errors)
  end)

  it("answers malformed JSON with a 400 problem before the handler runs", function()
    local s, h, body = app.dispatch(request("POST", "/things",
      { headers = { ["content-type"] = "application/json" }, body = '{"n":' }))
    assert.are.equal(400, s)
    assert.are.equal("application/problem+json", h["Content-Type"])
    assert.are.equal("https://evently.dev/problems/malformed-json", cjson.decode(body).type)
  end)

  it("lets a handler yield", function()
    local s, _, body = app.dispatch(request("GET", "/slow"))
    assert.are.equal(200, s)
    assert.are.equal("done", body)
  end)

  it("answers a handler error with a 500 problem that hides the message", function()
    local s, _, body = app.dispatch(request("GET", "/boom"))
    assert.are.equal(500, s)
    assert.is_nil(body:find("secret", 1, true))
    assert.are.equal("spec-1", cjson.decode(body).request_id)
  end)

  it("answers a database error a handler raised with 503 unavailable, not 500", function()
    app.get("/db-down", function() error({ kind = "unavailable", message = "connection refused" }) end)
    local s, h, body = app.dispatch(request("GET", "/db-down"))
    assert.are.equal(503, s)
    assert.are.equal("1", h["Retry-After"])
    assert.are.equal("https://evently.dev/problems/unavailable", cjson.decode(body).type)
    assert.is_nil(body:find("refused", 1, true))
  end)

  it("answers a body that cannot be sent with a 500 problem", function()
    app.get("/nan", function() return { ratio = 0 / 0 } end)
    app.get("/fn", function() return 200, print end)
    for _, path in ipairs({ "/nan", "/fn" }) do
      local s, h, body = app.dispatch(request("GET", path))
      assert.are.equal(500, s)
      assert.are.equal("application/problem+json", h["Content-Type"])
      assert.are.equal("https://evently.dev/problems/internal", cjson.decode(body).type)
    end
  end)

  it("answers problem.raise with that problem and its extra members", function()
    local s, _, body = app.dispatch(request("GET", "/conflict"))
    local doc = cjson.decode(body)
    assert.are.equal(409, s)
    assert.are.equal("https://evently.dev/problems/sold-out", doc.type)
    assert.are.equal(0, doc.available)
    assert.are.equal(409, doc.status)
  end)

  it("answers 404 and 405 with Allow", function()
    local s = app.dispatch(request("GET", "/missing"))
    assert.are.equal(404, s)
    local s2, h2 = app.dispatch(request("DELETE", "/things/1"))
    assert.are.equal(405, s2)
    assert.are.equal("GET, HEAD", h2.Allow)
  end)

  it("passes status-only and custom header answers through", function()
    local s, _, body = app.dispatch(request("GET", "/empty"))
    assert.are.equal(204, s); assert.are.equal("", body)
    local s2, h2, body2 = app.dispatch(request("GET", "/custom"))
    assert.are.equal(202, s2); assert.are.equal("1", h2["X-Thing"]); assert.are.equal("x", body2)
  end)

  it("lets a request hook short-circuit and a response hook change the answer", function()
    hooks.on("request", function(req) if req.path == "/things/blocked" then return 403, { no = true } end end)
    hooks.on("response", function(ctx) ctx.headers = { ["X-Seen"] = "yes", ["Content-Type"] = "application/json" } end)
    local s, h = app.dispatch(request("GET", "/things/blocked"))
    assert.are.equal(403, s)
    assert.are.equal("yes", h["X-Seen"])
    local s2 = app.dispatch(request("GET", "/things/open"))
    assert.are.equal(200, s2)
  end)
end)
