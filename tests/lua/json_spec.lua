local json = require "evently.json"

describe("evently.json", function()
  it("encodes integers exactly, past cjson's 14 digits", function()
    assert.are.equal('{"id":9007199254740991}', json.encode({ id = 9007199254740991 }))
    assert.are.equal("-9223372036854775808", json.encode(math.mininteger))
  end)

  it("round-trips a decoded large integer and keeps floats short", function()
    local v = json.decode('{"id": 9007199254740991, "f": 0.1, "g": 1e300}')
    assert.are.equal('9007199254740991', json.encode(v.id))
    assert.are.equal('0.1', json.encode(v.f))
    assert.are.equal(1e300, json.decode(json.encode(v.g)))
  end)

  it("escapes what JSON requires and nothing more", function()
    assert.are.equal([["a\"b\\c\n\u0001/é"]], json.encode('a"b\\c\n\1/é'))
  end)

  it("tells arrays from objects, and marks empty arrays", function()
    assert.are.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
    assert.are.equal("{}", json.encode({}))
    assert.are.equal("[]", json.encode(json.array({})))
    assert.are.equal("[]", json.encode(json.empty_array))
    -- keys that are not exactly 1..n make an object, keyed by strings
    assert.are.same({ ["1"] = "a", ["3"] = "c" }, json.decode(json.encode({ [1] = "a", [3] = "c" })))
  end)

  it("encodes null and refuses what JSON cannot say", function()
    assert.are.equal('[null,true]', json.encode({ json.null, true }))
    local v, err = json.encode({ f = function() end })
    assert.is_nil(v); assert.truthy(err:find("cannot encode a function"))
    v, err = json.encode(0 / 0)
    assert.is_nil(v); assert.truthy(err:find("NaN"))
    local t = {}; t.self = t
    v, err = json.encode(t)
    assert.is_nil(v); assert.truthy(err:find("too deep"))
  end)

  it("decodes with nil, err on malformed input", function()
    local v, err = json.decode('{"a":')
    assert.is_nil(v); assert.is_string(err)
  end)
end)
