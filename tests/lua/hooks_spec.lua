local hooks = require "evently.hooks"

describe("evently.hooks", function()
  before_each(function() hooks.clear() end)
  after_each(function() hooks.clear() end)

  it("runs hooks by priority, higher first, ties in registration order", function()
    local seen = {}
    hooks.on("x", function() seen[#seen + 1] = "low" end, 1)
    hooks.on("x", function() seen[#seen + 1] = "high" end, 10)
    hooks.on("x", function() seen[#seen + 1] = "low2" end, 1)
    hooks.run("x", {})
    assert.are.same({ "high", "low", "low2" }, seen)
  end)

  it("stops at the first hook that returns a value and returns it", function()
    local ran = false
    hooks.on("x", function() return "answer" end, 5)
    hooks.on("x", function() ran = true end, 1)
    assert.are.equal("answer", hooks.run("x", {}))
    assert.is_false(ran)
  end)

  it("passes the context to every hook", function()
    hooks.on("x", function(ctx) ctx.n = ctx.n + 1 end)
    hooks.on("x", function(ctx) ctx.n = ctx.n * 10 end)
    local ctx = { n = 1 }
    hooks.run("x", ctx)
    assert.are.equal(20, ctx.n)
  end)

  it("returns nil when nothing is registered", function()
    assert.is_nil(hooks.run("nothing", {}))
  end)

  it("refuses bad arguments", function()
    assert.has_error(function() hooks.on(1, function() end) end)
    assert.has_error(function() hooks.on("x", nil) end)
    assert.has_error(function() hooks.on("x", function() end, 1.5) end)
  end)
end)
