-- POST /auth/register, /auth/login, /auth/logout (API.md "Auth and users").
local problem = require "evently.problem"
local limit = require "evently.limit"
local validate = require "web.validate"
local auth = require "web.auth"
local users = require "domain.users"
local tokens = require "domain.tokens"
local rules = require "rules.auth"
local auth_limits = require "domain.auth_limits"

-- 503 when the work could not be done now. The hasher's queue full or too
-- slow ("busy", "timeout"): the password was never checked, so the answer is
-- "come back", never 401 (API.md "Rate limits and overload").
local function not_now(err, doing)
  if err ~= "busy" and err ~= "timeout" then return problem.unavailable(doing, err) end
  local status, body, headers = problem.response(503, "busy", "too many password checks at once; retry shortly")
  headers["Retry-After"] = "1"
  return status, body, headers
end

return function(app, base)
  app.post(base .. "/auth/register", function(req)
    local v = validate.new(req.json)
    local email, password, name = users.read_new_account(v)
    v:check()
    local allowed, info = auth_limits.register(limit.address(req.peer))
    if not allowed then return limit.response(info) end
    local user, err = users.register(email, password, name)
    if err == "duplicate" then return problem.response(409, "email-taken", "an account with this email exists") end
    if not user then return not_now(err, "register") end
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
end
