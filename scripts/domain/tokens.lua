--- tokens: bearer tokens, stored as SHA-256, sliding expiry, revocable at once.
local db = require "evently.db"
local crypto = require "evently.crypto"
local rules = require "rules.auth"

local M = {}

--- Issues a token for user_id. Returns token, expires_at | nil, err.
function M.issue(user_id)
  local token = crypto.random_token(32)
  local row, err = db.one([[INSERT INTO auth_tokens (token_hash, user_id, expires_at)
      VALUES ($1, $2, now() + make_interval(mins => $3)) RETURNING expires_at]],
    crypto.sha256(token), user_id, rules.token_ttl_minutes)
  if not row then return nil, err end
  return token, row.expires_at
end

local cache = require "evently.cache"

-- A resolved token is cached for CACHE_TTL seconds (this worker, then Redis):
-- a busy client costs one database write per half minute, not one per
-- request. The write slides the expiry, so a token in use never lapses; an
-- idle one lapses at most CACHE_TTL late. Logout drops the cached entry on
-- every worker at once (cache.invalidate), so revocation stays immediate.
local CACHE_TTL = 30

local function slide(hash)
  local user, err = db.one([[WITH t AS (
        UPDATE auth_tokens SET expires_at = now() + make_interval(mins => $2)
        WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
        RETURNING user_id)
      SELECT u.id, u.email, u.name, u.role, u.created_at FROM users u JOIN t ON t.user_id = u.id]],
    hash, rules.token_ttl_minutes)
  if err then return nil, err end
  return user or false
end

--- Resolves a token to its user, pushing its expiry forward.
-- Returns user | nil (unknown, expired or revoked) | nil, err.
function M.resolve(token)
  local hash = crypto.sha256(token)
  local user, err = cache.fetch("token:" .. hash, CACHE_TTL, function() return slide(hash) end)
  if err then return nil, err end
  return user or nil, nil, hash
end

--- Seconds the token stays valid without further use (no sliding): a number,
-- nil when it is revoked, expired or unknown, or nil, err.
function M.seconds_left(token)
  local row, err = db.one([[SELECT extract(epoch FROM expires_at - now())::float8 AS left
      FROM auth_tokens WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()]],
    crypto.sha256(token))
  if err then return nil, err end
  return row and row.left or nil
end

function M.revoke(token)
  local hash = crypto.sha256(token)
  local ok, err = db.query(
    "UPDATE auth_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL", hash)
  if ok then cache.invalidate("token:" .. hash) end
  return ok, err
end

return M
