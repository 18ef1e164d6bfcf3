--- auth: who is calling. Handlers call auth.user(req) or auth.admin(req);
-- both raise the right problem (401 without a valid token, 403 for a wrong
-- role, 503 when the database cannot answer).
local problem = require "evently.problem"
local tokens = require "domain.tokens"

local time = require "evently.time"
local cache = require "evently.cache"

local M = {}

local early = require "evently.early"

-- A token seen in the last second is answered from this table: no hash, no
-- cache lookup. Revocation (logout) reaches it through the cache's
-- invalidation fan-out, so it still stops working at once.
-- The worker's C token cache (evently.early) is told the same, for the same
-- time, so early answers (a sold-out booking) know the caller without Lua.
local RECENT = 1.0
local recent, by_hash = {}, {}
cache.on_invalidate(function(key)
  local hash = key:match("^token:(.+)$")
  local token = hash and by_hash[hash]
  if token then
    recent[token], by_hash[hash] = nil, nil
    early.forget_token(token)
  end
end)

local function remembered(token)
  local e = recent[token]
  if e and e.until_ > time.monotonic() then return e.user end
  if e then recent[token], by_hash[e.hash] = nil, nil end
end

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
  local user = remembered(token)
  if not user then
    local err, hash
    user, err, hash = tokens.resolve(token)
    if err then problem.raise(503, "unavailable", "cannot check the token now") end
    if not user then problem.raise(401, "unauthorized", "the token is unknown, expired or revoked") end
    recent[token] = { user = user, hash = hash, until_ = time.monotonic() + RECENT }
    by_hash[hash] = token
    early.remember_token(token, user.id, RECENT) -- a full C cache only means no early answer
  end
  req.user, req.token = user, token
  return user
end

-- 503 when a password could not be checked or hashed now. The hasher's
-- queue full or too slow ("busy", "timeout"): the password was never
-- checked, so the answer is "come back", never 401 (API.md "Rate limits and
-- overload"); anything else is a dependency's error.
function M.not_now(err, doing)
  if err ~= "busy" and err ~= "timeout" then return problem.unavailable(doing, err) end
  local status, body, headers = problem.response(503, "busy", "too many password checks at once; retry shortly")
  headers["Retry-After"] = "1"
  return status, body, headers
end

function M.admin(req)
  local user = M.user(req)
  if user.role ~= "admin" then problem.raise(403, "forbidden", "this needs the admin role") end
  return user
end

return M
