-- GET /users/me (API.md "Auth and users"); POST /users/me/password and
-- PATCH /admin/users/{id} (issue 15, README "Accounts").
local db = require "evently.db"
local problem = require "evently.problem"
local limit = require "evently.limit"
local crypto = require "evently.crypto"
local validate = require "web.validate"
local auth = require "web.auth"
local users = require "domain.users"
local tokens = require "domain.tokens"
local auth_limits = require "domain.auth_limits"
local rules = require "rules.auth"

return function(app, base)
  app.get(base .. "/users/me", function(req)
    return users.public(auth.user(req))
  end, "users.me")

  -- The current password is checked as a login checks it (the same limits
  -- on wrong guesses); every other session of the account ends.
  app.post(base .. "/users/me/password", function(req)
    local user = auth.user(req)
    local v = validate.new(req.json)
    local current = v:string("current_password", { required = true, max = rules.max_password_length })
    local password = v:string("password",
      { required = true, min = rules.min_password_length, max = rules.max_password_length })
    v:check()
    local attempt, info = auth_limits.login(limit.address(req.peer), user.email)
    if not attempt then return limit.response(info) end
    local ok, err = users.check_password(user.id, current)
    if ok == nil then
      attempt:done("unchecked")
      return auth.not_now(err, "check the password")
    end
    if not ok then
      attempt:done("failed")
      return problem.response(403, "invalid-credentials", "the current password is wrong")
    end
    attempt:done("ok")
    local set, serr = users.set_password(user.id, password)
    if not set then return auth.not_now(serr, "change the password") end
    local n, rerr = tokens.revoke_all(user.id, crypto.sha256(req.token))
    if not n then return problem.unavailable("end the other sessions", rerr) end
    return 204
  end, "users.password")

  -- {disabled: true} stops an account at once: its tokens are revoked (its
  -- WebSockets close) and it cannot log in; {disabled: false} lets it log in
  -- again.
  app.patch(base .. "/admin/users/:id", function(req)
    local admin = auth.admin(req)
    local id = math.tointeger(tonumber(req.params.id))
    if not id then problem.raise(404, "not-found", "no such user") end
    local v = validate.new(req.json)
    local disabled = v:boolean("disabled", { required = true })
    v:check()
    if disabled and id == admin.id then
      return problem.response(422, "validation", "an administrator cannot disable their own account",
        { errors = { { field = "disabled", message = "cannot disable your own account" } } })
    end
    -- disabled and its tokens revoked together, or neither
    local user, hashes = db.transaction(function(tx)
      local u, err = users.set_disabled(id, disabled, tx)
      if u == nil then error(err, 0) end
      if not u or not disabled then return u, {} end
      return u, assert(tokens.revoke_all_in(tx, id))
    end)
    if user == nil then return problem.unavailable("change the account", hashes) end
    if not user then return problem.response(404, "not-found", "no such user") end
    tokens.forget(hashes)
    return user
  end, "admin.users.update")
end
