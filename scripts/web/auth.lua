--- auth: who is calling. Handlers call auth.user(req) or auth.admin(req);
-- both raise the right problem (401 without a valid token, 403 for a wrong
-- role, 503 when the database cannot answer).
local problem = require "evently.problem"
local tokens = require "domain.tokens"

local M = {}

function M.token(req)
  local h = req.headers.authorization
  return h and h:match("^[Bb]earer%s+([%w_%-]+)%s*$")
end

function M.user(req)
  if req.user then return req.user end
  local token = M.token(req)
  if not token then
    problem.raise(401, "unauthorized", "a valid bearer token is required", nil)
  end
  local user, err = tokens.resolve(token)
  if err then problem.raise(503, "unavailable", "cannot check the token now") end
  if not user then problem.raise(401, "unauthorized", "the token is unknown, expired or revoked") end
  req.user, req.token = user, token
  return user
end

function M.admin(req)
  local user = M.user(req)
  if user.role ~= "admin" then problem.raise(403, "forbidden", "this needs the admin role") end
  return user
end

return M
