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

describe("evently.json.decode", function()
  it("gives integers back as integers, so ids print and bind as themselves", function()
    local v = json.decode('{"id": 7, "nested": [{"n": 3}], "f": 1.5, "big": 1e300}')
    assert.are.equal("integer", math.type(v.id))
    assert.are.equal("7", tostring(v.id))
    assert.are.equal("integer", math.type(v.nested[1].n))
    assert.are.equal("float", math.type(v.f))
    assert.are.equal("float", math.type(v.big))
    assert.are.equal("integer", math.type(json.decode("42")))
  end)
end)

describe("evently.json.decode reads RFC 8259 JSON only", function()
  it("refuses number spellings RFC 8259 has not with nil, err and no errors list", function()
    for _, text in ipairs({ "0x10", "-0x10", "0X1F", "NaN", "nan", "Infinity", "-Infinity", "inf",
                            "+1", "012", "-012", "00", ".5", "-.5", "1.", "1.e3", "1e", "1e+",
                            "-", "1.5.2", "1_000", '{"quantity": 0x10}', '{"quantity": NaN}',
                            '{"quantity": Infinity}', '{"quantity": +1}', '[012]' }) do
      local v, err, errors = json.decode(text)
      assert.is_nil(v, text)
      assert.is_truthy(err:find("^malformed JSON: "), text .. ": " .. err)
      assert.is_nil(errors, text)
    end
  end)

  it("reads every number spelling RFC 8259 has", function()
    assert.are.same({ 0, 0, 12, -12, 1.5, 0.00025, 100000, 100000, -0.01, 1.7976931348623157e308 },
      json.decode("[0, -0, 12, -12, 1.5, 0.25e-3, 1E5, 1e+5, -1.0E-2, 1.7976931348623157e308]"))
  end)

  it("refuses a BOM, trailing text and raw control characters as malformed", function()
    for _, text in ipairs({ "\239\187\191{}", "{} x", '"a\tb"', '"a\0b"', "[1,]", "" }) do
      local v, err, errors = json.decode(text)
      assert.is_nil(v); assert.is_truthy(err:find("^malformed JSON: ")); assert.is_nil(errors)
    end
  end)

  it("answers strings that are not UTF-8 with an errors list naming each field", function()
    local v, err, errors = json.decode('{"email": "a\255@x.io", "name": "ok", "queue": {"tags": ["x", "\192\128"]}}')
    assert.is_nil(v)
    assert.is_truthy(err:find("^invalid JSON value: "))
    table.sort(errors, function(a, b) return a.field < b.field end)
    assert.are.same({ { field = "email", message = "must be valid UTF-8" },
                      { field = "queue.tags[1]", message = "must be valid UTF-8" } }, errors)
  end)

  it("answers an unpaired surrogate escape as invalid, a paired one as its character", function()
    for _, text in ipairs({ '{"name": "\\ud800"}', '{"name": "\\udc00x"}', '{"name": "\\ud800\\u0041"}' }) do
      local v, _, errors = json.decode(text)
      assert.is_nil(v, text)
      assert.are.same({ { field = "name", message = "must not contain an unpaired surrogate escape" } }, errors)
    end
    assert.are.equal("\240\159\152\128", json.decode('"\\ud83d\\ude00"'))
    assert.are.equal("\0", json.decode('"\\u0000"'))
  end)

  it("names a member name that is not UTF-8, and the whole text as body", function()
    local _, _, errors = json.decode('{"n\255": 1}')
    assert.are.same({ { field = "n\255", message = "name must be valid UTF-8" } }, errors)
    _, _, errors = json.decode('"\255"')
    assert.are.same({ { field = "body", message = "must be valid UTF-8" } }, errors)
  end)

  it("answers numbers past the double range as invalid rather than inf", function()
    local v, _, errors = json.decode('{"quantity": 1e400, "price_cents": -1E309, "ok": 1e-400}')
    assert.is_nil(v)
    table.sort(errors, function(a, b) return a.field < b.field end)
    assert.are.same({ { field = "price_cents", message = "is out of range" },
                      { field = "quantity", message = "is out of range" } }, errors)
    assert.are.equal(0, json.decode("1e-400"))
  end)

  it("lists at most 20 invalid values", function()
    local _, _, errors = json.decode("[" .. string.rep('"\255",', 30) .. "1]")
    assert.are.equal(20, #errors)
    assert.are.equal("[19]", errors[20].field)
  end)

  it("gives nil, err for what is not a text", function()
    local v, err = json.decode({})
    assert.is_nil(v); assert.is_string(err)
    assert.are.equal(42, json.decode(42))
  end)
end)

describe("evently.json.encode writes UTF-8 only", function()
  it("passes well-formed UTF-8 through", function()
    assert.are.equal('"é€😀"', json.encode("é€😀"))
  end)

  it("replaces each ill-formed sequence with U+FFFD instead of sending it", function()
    local R = "\239\191\189"
    assert.are.equal('"a' .. R .. 'b"', json.encode("a\255b"))
    assert.are.equal('"' .. R .. 'x"', json.encode("\226\130x"))            -- cut short: one
    assert.are.equal('"' .. R .. R .. R .. '"', json.encode("\237\160\128")) -- a surrogate: three
    assert.are.equal('"' .. R .. R .. '"', json.encode("\192\128"))          -- overlong
    -- past U+10FFFF: F4 90 is ill-formed at its second byte, so four
    assert.are.equal('{"' .. R .. '":"' .. R:rep(4) .. '"}', json.encode({ ["\128"] = "\244\144\128\128" }))
    for _, s in ipairs({ "\255", "\240\159\152", "x\237\191\191", string.rep("\200", 3) }) do
      assert.is_truthy(utf8.len(json.encode(s)), s)
      assert.is_string(json.decode(json.encode(s)))
    end
  end)
end)
