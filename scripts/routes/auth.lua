-- POST /auth/register, /auth/login, /auth/logout (API.md "Auth and users");
-- /auth/logout-all, /auth/password-reset[/confirm], /auth/verify-email[/resend]
-- (issue 15, README "Accounts").
local problem = require "evently.problem"
local limit = require "evently.limit"
local validate = require "web.validate"
local auth = require "web.auth"
local users = require "domain.users"
local tokens = require "domain.tokens"
local rules = require "rules.auth"
local auth_limits = require "domain.auth_limits"

local password_resets = require "domain.password_resets"

local account_mail = require "domain.account_mail"

local not_now = auth.not_now

-- The account mails asked for by address (a reset, a new confirmation
-- code): limited per client address, then per account. email | nil, info.
local function mail_request(req, account_rule)
  local allowed, info = limit.check(rules.limits.reset_address, limit.address(req.peer))
  if not allowed then return nil, info end
  local v = validate.new(req.json)
  local email = v:string("email", { required = true, max = 254 })
  v:check()
  allowed, info = limit.check(account_rule, email:lower())
  if not allowed then return nil, info end
  return email
end

-- A mailed code that does not work: 422 naming the field, as validation does.
local function bad_code(why)
  return problem.response(422, "validation", "the code is " .. why,
    { errors = { { field = "token", message = "is " .. why } } })
end

local function mail_verification(user)
  local code, err = users.verification_code(user, rules.verify_email_hours * 3600)
  if not code then return nil, err end
  account_mail.send_later("email.verify", { token = code, hours = rules.verify_email_hours }, user)
  return true
end

return function(app, base)
  app.post(base .. "/auth/register", function(req)
    local v = validate.new(req.json)
    local email, password, name = users.read_new_account(v)
    v:check()
    local allowed, info = auth_limits.register(limit.address(req.peer))
    if not allowed then return limit.response(info) end
    local unverified = rules.verify_email == true
    local user, err = users.register(email, password, name, nil, unverified)
    if err == "duplicate" then return problem.response(409, "email-taken", "an account with this email exists") end
    if not user then return not_now(err, "register") end
    if unverified then -- no token until the address is confirmed
      local ok, merr = mail_verification(user)
      if not ok then return problem.unavailable("register", merr) end
      return 201, { user = users.public(user), verification = "mailed" }
    end
    local token, expires_at = tokens.issue(user.id)
    if not token then return problem.unavailable("issue a token", expires_at) end
    return 201, { user = users.public(user), token = token, expires_at = expires_at }
  end, "auth.register")

  -- Every attempt counts against its address before anything else is read,
  -- so a refused address can be answered from C (limit.answer_early).
  app.post(base .. "/auth/login", function(req)
    local address = limit.address(req.peer)
    local allowed, info = auth_limits.login_address(address)
    if not allowed then return limit.response(info) end
    local v = validate.new(req.json)
    local email = v:string("email", { required = true, max = 254 })
    local password = v:string("password", { required = true, max = rules.max_password_length })
    v:check()
    local attempt
    attempt, info = auth_limits.login(address, email)
    if not attempt then return limit.response(info) end
    local user, err = users.authenticate(email, password)
    if err then
      attempt:done("unchecked")
      return not_now(err, "log in")
    end
    if not user then
      attempt:done("failed")
      return problem.response(401, "invalid-credentials", "wrong email or password")
    end
    attempt:done("ok")
    if user.disabled then
      return problem.response(403, "account-disabled", "this account is disabled; ask an administrator")
    end
    if user.unverified and rules.verify_email == true then
      return problem.response(403, "email-unverified",
        "confirm your email address first, with the code we mailed (POST /auth/verify-email)")
    end
    local token, expires_at = tokens.issue(user.id)
    if not token then return problem.unavailable("issue a token", expires_at) end
    return 200, { token = token, expires_at = expires_at, user = users.public(user) }
  end, "auth.login")
  limit.answer_early{ method = "POST", path = base .. "/auth/login", route = "auth.login",
    rule = rules.limits.login_address }

  app.post(base .. "/auth/logout", function(req)
    auth.user(req)
    local ok, err = tokens.revoke(req.token)
    if not ok then return problem.unavailable("log out", err) end
    return 204
  end, "auth.logout")

  -- Every session of the caller ends at once, this one included (its
  -- WebSockets close too).
  app.post(base .. "/auth/logout-all", function(req)
    local user = auth.user(req)
    local n, err = tokens.revoke_all(user.id)
    if not n then return problem.unavailable("log out everywhere", err) end
    return 204
  end, "auth.logout_all")

  -- Always 202, whether or not the account exists (no way to learn who has
  -- one); the mail, when there is one, goes out after the answer.
  app.post(base .. "/auth/password-reset", function(req)
    local email, info = mail_request(req, rules.limits.reset_account)
    if not email then return limit.response(info) end
    local ok, err = password_resets.request(email)
    if not ok then return problem.unavailable("ask for a password reset", err) end
    return 202, { status = "accepted" }
  end, "auth.password_reset")

  app.post(base .. "/auth/verify-email", function(req)
    local v = validate.new(req.json)
    local code = v:string("token", { required = true, max = 200 })
    v:check()
    local ok, err = users.verify_email(code)
    if ok == nil then return problem.unavailable("confirm the address", err) end
    if not ok then return bad_code("unknown or expired") end
    return 204
  end, "auth.verify_email")

  -- A new code for an account that has not confirmed its address; always 202.
  app.post(base .. "/auth/verify-email/resend", function(req)
    local email, info = mail_request(req, rules.limits.verify_account)
    if not email then return limit.response(info) end
    local user, err = users.find_unverified(email)
    if user == nil then return problem.unavailable("mail a confirmation code", err) end
    if user then
      local ok, merr = mail_verification(user)
      if not ok then return problem.unavailable("mail a confirmation code", merr) end
    end
    return 202, { status = "accepted" }
  end, "auth.verify_email_resend")

  app.post(base .. "/auth/password-reset/confirm", function(req)
    -- guessing codes is hopeless (32 random bytes), but each live one costs a hash
    local allowed, info = limit.check(rules.limits.reset_address, limit.address(req.peer))
    if not allowed then return limit.response(info) end
    local v = validate.new(req.json)
    local token = v:string("token", { required = true, min = 16, max = 200 })
    local password = v:string("password",
      { required = true, min = rules.min_password_length, max = rules.max_password_length })
    v:check()
    local ok, err = password_resets.confirm(token, password)
    if ok == nil then return not_now(err, "reset the password") end
    if not ok then return bad_code("unknown, used or expired") end
    return 204
  end, "auth.password_reset_confirm")
end
