local crypto = require "evently.crypto"
local time = require "evently.time"

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
