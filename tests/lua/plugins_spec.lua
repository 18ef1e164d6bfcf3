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

  -- Every plugin shipped with the project: each folder with a plugin.lua under
  -- examples/plugins/ or plugins/ (found by listing them, so a new one is
  -- checked without editing this test).
  local function shipped_plugins()
    local found = {}
    for _, root in ipairs({ "examples/plugins", "plugins" }) do
      local ls = assert(io.popen("ls -1 " .. root .. " 2>/dev/null"))
      for name in ls:lines() do
        local f = io.open(root .. "/" .. name .. "/plugin.lua")
        if f then
          f:close()
          found[#found + 1] = { root = root, name = name }
        end
      end
      ls:close()
    end
    return found
  end

  it("keeps the shipped example plugins' priorities unique", function()
    local found = shipped_plugins()
    assert.is_true(#found >= 1, "no shipped plugin found (run from the repository root)")
    -- Load all of them, each root at once, so plugins.load's own check runs too.
    local by_root, loaded = {}, {}
    for _, p in ipairs(found) do
      by_root[p.root] = by_root[p.root] or {}
      table.insert(by_root[p.root], p.name)
    end
    for root, names in pairs(by_root) do
      for _, p in ipairs(plugins.load(root, names)) do loaded[#loaded + 1] = { root = root, p = p } end
    end
    assert.are.equal(#found, #loaded)
    -- Unique across both roots, since a deployment may enable any of them together.
    local owner = {}
    for _, l in ipairs(loaded) do
      local where = l.root .. "/" .. l.p.name
      assert.is_nil(owner[l.p.priority],
        where .. " has the same priority " .. l.p.priority .. " as " .. tostring(owner[l.p.priority]))
      owner[l.p.priority] = where
    end
  end)
end)
