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

--- Resolves a token to its user, pushing its expiry forward, in one round trip.
-- Returns user | nil (unknown, expired or revoked) | nil, err.
function M.resolve(token)
  return db.one([[WITH t AS (
        UPDATE auth_tokens SET expires_at = now() + make_interval(mins => $2)
        WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
        RETURNING user_id)
      SELECT u.id, u.email, u.name, u.role, u.created_at FROM users u JOIN t ON t.user_id = u.id]],
    crypto.sha256(token), rules.token_ttl_minutes)
end

function M.revoke(token)
  return db.query("UPDATE auth_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
    crypto.sha256(token))
end

return M
