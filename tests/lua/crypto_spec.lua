local crypto = require "evently.crypto"
local time = require "evently.time"
local runtime = require "evently.runtime"

describe("evently.crypto", function()
  it("hashes with argon2id and verifies only the right password", function()
    local h = assert(crypto.hash_password("correct horse battery"))
    assert.truthy(h:find("^%$argon2id%$"))
    assert.is_true(crypto.verify_password(h, "correct horse battery"))
    assert.is_false(crypto.verify_password(h, "wrong horse battery"))
    assert.is_false(crypto.verify_password("not a hash", "x"))
  end)

  it("salts: the same password hashes differently each time", function()
    assert.are_not.equal(crypto.hash_password("samesame1"), crypto.hash_password("samesame1"))
  end)

  it("hashes off the loop: a timer keeps firing meanwhile", function()
    local ticks = 0
    local t = time.every(0.005, function() ticks = ticks + 1 end)
    crypto.hash_password("keep the loop going")
    t:cancel()
    assert.is_true(ticks >= 2, "ticks " .. ticks)
  end)

  it("answers nil, 'busy' at once beyond its queue bound, never a wrong password", function()
    local h = assert(crypto.hash_password("right password"))
    local n = runtime.config().hash_queue_max + 8 -- one runs, hash_queue_max wait, the rest: busy
    local results, done = {}, 0
    for i = 1, n do
      time.after(0, function()
        local t0 = time.monotonic()
        results[i] = table.pack(crypto.verify_password(h, "right password"))
        results[i].took = time.monotonic() - t0
        done = done + 1
      end)
    end
    local deadline = time.monotonic() + 30
    while done < n and time.monotonic() < deadline do time.sleep(0.05) end
    assert.are.equal(n, done)
    local right, busy = 0, 0
    for _, r in ipairs(results) do
      if r[1] == true then
        right = right + 1
      else
        assert.are.equal(2, r.n) -- nil, err: never false, which would read as a wrong password
        assert.is_nil(r[1])
        assert.are.equal("busy", r[2])
        assert.is_true(r.took < 0.05, "busy must answer at once, took " .. r.took)
        busy = busy + 1
      end
    end
    assert.is_true(busy >= 1 and busy <= 8, "busy " .. busy)
    assert.are.equal(n, right + busy)
    -- the queue drained: it takes work again
    assert.is_true(crypto.verify_password(h, "right password"))
  end)

  it("makes distinct URL-safe tokens and hex digests", function()
    local a, b = crypto.random_token(), crypto.random_token()
    assert.are_not.equal(a, b)
    assert.truthy(a:match("^[%w_%-]+$"))
    assert.are.equal(43, #a)
    assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", crypto.sha256(""))
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "abcd"))
  end)
end)
