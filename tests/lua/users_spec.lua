-- domain/users.lua: what counts as an email address (RFC 5321 mailbox only).
local users = require "domain.users"

describe("domain.users valid_email", function()
  it("takes plain mailboxes", function()
    for _, s in ipairs({ "a@b.co", "first.last@example.com", "x+tag@sub.example.org", "o'neil@ex-ample.io",
      "UPPER@EXAMPLE.COM", "a!#$%&'*+-/=?^_`{|}~@b.co", "1@2.3" }) do
      assert.is_true(users.valid_email(s), s)
    end
  end)

  it("refuses display names, angle brackets, lists, quotes, spaces and malformed parts", function()
    for _, s in ipairs({ "x<victim@y.com>", "Eve <eve@y.com>", "<eve@y.com>", "a@b.co,victim@y.com",
      "\"a b\"@c.de", "a b@c.de", "a@b", "@b.co", "a@", "a@@b.co", "a@b@c.co", ".a@b.co", "a.@b.co",
      "a..b@c.co", "a@.b.co", "a@b..co", "a@-b.co", "a@b-.co", "a@b_c.co", "a@b.co.", "a(c)@b.co",
      "a@[1.2.3.4]", string.rep("a", 65) .. "@b.co", "a@" .. string.rep("b", 64) .. ".co", "a\n@b.co",
      "a@b.co\n" }) do
      assert.is_false(users.valid_email(s), s)
    end
  end)
end)
