local plugins = require "evently.plugins"
local hooks = require "evently.hooks"

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))

local function write_plugin(name, body)
  os.execute("mkdir -p " .. dir .. "/" .. name)
  local f = assert(io.open(dir .. "/" .. name .. "/plugin.lua", "w"))
  f:write(body)
  f:close()
end

describe("evently.plugins", function()
  before_each(function() hooks.clear() end)
  after_each(function() hooks.clear() end)
  teardown(function() os.execute("rm -rf " .. dir) end)

  it("loads plugins in priority order and registers their hooks with it", function()
    write_plugin("low", [[return { version = "1", priority = 10, hooks = { x = function(c) c[#c+1] = "low" end } }]])
    write_plugin("high", [[return { version = "1", priority = 20, hooks = { x = function(c) c[#c+1] = "high" end } }]])
    local list = plugins.load(dir, { "low", "high" })
    assert.are.equal("high", list[1].name)
    local seen = {}
    hooks.run("x", seen)
    assert.are.same({ "high", "low" }, seen)
  end)

  it("refuses two plugins with the same priority", function()
    write_plugin("a", [[return { version = "1", priority = 5 }]])
    write_plugin("b", [[return { version = "1", priority = 5 }]])
    assert.has_error(function() plugins.load(dir, { "a", "b" }) end)
  end)

  it("refuses a plugin without an integer priority, or with a path in its name", function()
    write_plugin("nopri", [[return { version = "1" }]])
    assert.has_error(function() plugins.load(dir, { "nopri" }) end)
    assert.has_error(function() plugins.load(dir, { "../etc" }) end)
  end)

  it("reports a missing plugin with its path", function()
    local ok, err = pcall(plugins.load, dir, { "missing" })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("missing/plugin.lua", 1, true))
  end)

  it("keeps the shipped example plugins' priorities unique", function()
    local list = plugins.load("examples/plugins", { "server-timing" })
    assert.are.equal(1, #list)
  end)
end)
