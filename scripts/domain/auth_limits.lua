--- auth_limits: how hard login and registration may be tried (rules.auth
-- limits; API.md "Rate limits and overload"), and the failed-login log.
--   ok, info = auth_limits.login_address(address)       [yields]
--       first thing in a login, before the body is read (the route's early
--       answer relies on it: limit.answer_early); false: answer
--       limit.response(info).
--   attempt, info = auth_limits.login(address, email)   [yields]
--       before the password is checked; nil, info when a limit refuses
--       (answer limit.response(info)).
--   attempt:done(outcome)  "ok" | "failed" | "unchecked" (busy hasher, db error)
--   ok, info = auth_limits.register(address)             [yields]
-- address is limit.address(req.peer).
--
-- Wrong passwords count against the (account, address) pair, so guessing from
-- one address stops after a few tries while the owner, elsewhere, logs in as
-- usual. Guessing spread over many addresses hits the looser per-account
-- limit; past it only addresses the account logged in from lately get in.
-- Each failure logs one line; the limits bound them per address and window.
local limit = require "evently.limit"
local redis = require "evently.redis"
local crypto = require "evently.crypto"
local log = require "evently.log"
local rules = require "rules.auth"

local M = {}

local KNOWN = "evently:login-known:"

local function known_key(account, address)
  return KNOWN .. crypto.sha256(account .. "\0" .. address):sub(1, 32)
end

-- Redis down: no address is known, so the per-account cap still holds.
local function known(account, address)
  return redis.call({ timeout = 0.25 }, "EXISTS", known_key(account, address)) == 1
end

-- For the log: no control character can end the line or forge another, no
-- quote ends the field, no byte beyond ASCII hides as something else.
local function printable(s)
  return (s:sub(1, 254):gsub('[%c"\\\127-\255]', function(c) return string.format("\\x%02x", c:byte()) end))
end

local Attempt = {}
Attempt.__index = Attempt

function Attempt:done(outcome)
  local l = rules.limits
  if outcome == "failed" then
    log.info('login failed: account "%s" from %s', printable(self.email), self.address)
    return
  end
  -- only wrong passwords count against the account
  limit.refund(l.login_account_address, self.pair)
  if self.took_account then limit.refund(l.login_account, self.account) end
  if outcome == "ok" then
    redis.call({ timeout = 0.25 }, "SET", known_key(self.account, self.address), "1",
      "EX", rules.known_address_days * 86400)
  end
end

function M.login_address(address)
  return limit.check(rules.limits.login_address, address)
end

function M.login(address, email)
  local l = rules.limits
  local account = email:lower()
  local pair = account .. "\0" .. address
  local ok, info = limit.check(l.login_account_address, pair)
  if not ok then return nil, info end
  local took_account, ainfo = limit.check(l.login_account, account)
  if not took_account and not known(account, address) then
    limit.refund(l.login_account_address, pair) -- refused: not a wrong password
    return nil, ainfo
  end
  return setmetatable({ address = address, email = email, account = account, pair = pair,
    took_account = took_account }, Attempt)
end

function M.register(address)
  return limit.check(rules.limits.register_address, address)
end

return M
