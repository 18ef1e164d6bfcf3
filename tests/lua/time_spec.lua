-- Specs run inside the evently runtime: sleep really yields to the loop.
local time = require "evently.time"

describe("evently.time", function()
  it("sleep yields and resumes after the delay", function()
    local t0 = time.monotonic()
    assert.is_true(time.sleep(0.05))
    assert.is_true(time.monotonic() - t0 >= 0.045)
  end)

  it("a timer runs while the spec sleeps (the loop is not blocked)", function()
    local fired = false
    time.after(0.01, function() fired = true end)
    assert.is_false(fired)
    time.sleep(0.05)
    assert.is_true(fired)
  end)

  it("timer bodies may sleep too, and pass their arguments", function()
    local got
    time.after(0, function(a, b) time.sleep(0.01); got = a + b end, 2, 3)
    time.sleep(0.06)
    assert.are.equal(5, got)
  end)

  it("every repeats until cancelled", function()
    local n = 0
    local t = time.every(0.01, function() n = n + 1 end)
    local deadline = time.monotonic() + 2 -- a loaded machine runs timers late, not never
    while n < 3 and time.monotonic() < deadline do time.sleep(0.01) end
    t:cancel()
    local seen = n
    assert.is_true(seen >= 3, "ran " .. seen .. " times")
    time.sleep(0.03)
    assert.are.equal(seen, n)
  end)

  it("a failing timer body does not stop the next run", function()
    local n = 0
    local t = time.every(0.01, function() n = n + 1; error("boom") end)
    time.sleep(0.06)
    t:cancel()
    assert.is_true(n >= 2)
  end)

  it("refuses negative and non-numeric delays", function()
    assert.has_error(function() time.sleep(-1) end)
    assert.has_error(function() time.after("x", function() end) end)
    assert.has_error(function() time.every(0, function() end) end)
  end)

  it("refuses a timer past 100,000 pending, and takes them again once some end", function()
    local handles, err = {}, nil
    for i = 1, 100001 do
      local ok, h = pcall(time.after, 3600, function() end)
      if not ok then err = h break end
      handles[i] = h
    end
    assert.is_truthy(err and err:find("timers already pending", 1, true), tostring(err))
    assert.is_true(#handles <= 100000)
    for _, h in ipairs(handles) do h:cancel() end
    local h = time.after(3600, function() end) -- room again
    h:cancel()
  end)
end)
