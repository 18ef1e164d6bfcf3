local problem = require "evently.problem"

describe("evently.problem", function()
  it("builds an RFC 9457 document with a stable type URI", function()
    local s, doc, h = problem.response(422, "validation", "bad fields",
      { errors = { { field = "quantity", message = "must be >= 1" } } })
    assert.are.equal(422, s)
    assert.are.equal("https://evently.dev/problems/validation", doc.type)
    assert.are.equal("Unprocessable Content", doc.title)
    assert.are.equal(422, doc.status)
    assert.are.equal("quantity", doc.errors[1].field)
    assert.are.equal("application/problem+json", h["Content-Type"])
  end)

  it("raises an error object that problem.is recognises, and only that", function()
    local ok, err = pcall(problem.raise, 409, "sold-out")
    assert.is_false(ok)
    assert.is_true(problem.is(err))
    assert.are.equal(409, err.status)
    local _, other = pcall(error, "plain")
    assert.is_false(problem.is(other))
  end)

  it("answers a dependency that failed with 503 unavailable, Retry-After, and no internals", function()
    local s, doc, h = problem.unavailable("book", { kind = "timeout", message = "secret host db7:5432" })
    assert.are.equal(503, s)
    assert.are.equal("https://evently.dev/problems/unavailable", doc.type)
    assert.are.equal("cannot book now", doc.detail)
    assert.are.equal("1", h["Retry-After"])
    assert.is_nil(require("evently.json").encode(doc):find("db7", 1, true))
  end)

  describe("from_err maps every error a handler raises to one answer", function()
    local function answer(err) -- status, kind, document
      local s, doc = problem.from_err(err, "req-7")
      return s, doc.type:match("[^/]+$"), doc
    end
    local function status_kind(err)
      local s, kind = answer(err)
      return { s, kind }
    end

    it("a raised problem as itself", function()
      local _, err = pcall(problem.raise, 409, "sold-out", "gone", { available = 0 })
      local s, kind, doc = answer(err)
      assert.are.same({ 409, "sold-out", 0 }, { s, kind, doc.available })
    end)

    it("a database or Redis error value as 503 unavailable", function()
      assert.are.same({ 503, "unavailable" }, status_kind({ kind = "closed", message = "server closed" }))
    end)

    it("a full Lua heap as 503 busy", function()
      assert.are.same({ 503, "busy" }, status_kind("not enough memory"))
    end)

    it("anything else as 500 internal, naming the request id", function()
      local s, kind, doc = answer("scripts/x.lua:3: attempt to index a nil value")
      assert.are.same({ 500, "internal", "req-7" }, { s, kind, doc.request_id })
      assert.are.same({ 500, "internal" }, status_kind({ kind = 7 })) -- not a binding's error value
    end)
  end)
end)
