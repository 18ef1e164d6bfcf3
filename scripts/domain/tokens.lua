--- tokens: bearer tokens, stored as SHA-256, sliding expiry, revocable at once.
local db = require "evently.db"
local crypto = require "evently.crypto"
local rules = require "rules.auth"

local M = {}

--- Issues a token for user_id. Returns token, expires_at | nil, err.
function M.issue(user_id)
  local token = crypto.random_token(32)
  local row, err = db.one([[INSERT INTO auth_tokens (token_hash, user_id, expires_at)
      VALUES ($1, $2, least(now() + make_interval(mins => $3), now() + make_interval(days => $4)))
      RETURNING expires_at]],
    crypto.sha256(token), user_id, rules.token_ttl_minutes, rules.token_max_days)
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

-- The expiry slides, but never past token_max_days after the login: a token
-- in constant use still ends (issue 15). A disabled user's tokens were
-- revoked when it was disabled; the join refuses them too.
local function slide(hash)
  local user, err = db.one([[WITH t AS (
        UPDATE auth_tokens SET expires_at = least(now() + make_interval(mins => $2),
                                                  created_at + make_interval(days => $3))
        WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
          AND created_at > now() - make_interval(days => $3)
        RETURNING user_id)
      SELECT u.id, u.email, u.name, u.role, u.created_at FROM users u JOIN t ON t.user_id = u.id
      WHERE u.disabled_at IS NULL]],
    hash, rules.token_ttl_minutes, rules.token_max_days)
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

--- Revokes every live token of user_id but the one whose hash is `keep`
-- (optional: a password change keeps the session that made it). Each stops
-- at once on every worker, and its WebSockets close. Returns the number
-- revoked | nil, err.
function M.revoke_all(user_id, keep)
  local hashes, err = M.revoke_all_in(db, user_id, keep)
  if not hashes then return nil, err end
  M.forget(hashes)
  return #hashes
end

--- revoke_all as part of the caller's transaction q: returns the revoked
-- tokens' hashes, for M.forget(hashes) once it committed | nil, err.
function M.revoke_all_in(q, user_id, keep)
  local rows, err = q.query([[UPDATE auth_tokens SET revoked_at = now()
      WHERE user_id = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR token_hash <> $2)
      RETURNING token_hash]], user_id, keep)
  if not rows then return nil, err end
  local hashes = {}
  for i, r in ipairs(rows) do hashes[i] = r.token_hash end
  return hashes
end

--- Drops revoked tokens from every worker's cache (their WebSockets close).
function M.forget(hashes)
  for _, h in ipairs(hashes) do cache.invalidate("token:" .. h) end
end

function M.revoke(token)
  local hash = crypto.sha256(token)
  local ok, err = db.query(
    "UPDATE auth_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL", hash)
  if ok then cache.invalidate("token:" .. hash) end
  return ok, err
end

return M
