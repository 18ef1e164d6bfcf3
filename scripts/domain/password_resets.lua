--- password_resets: "I forgot my password" (issue 15). A reset token is
-- mailed to the account's address, stored as its SHA-256 (like bearer
-- tokens), works once and for rules.auth.password_reset_minutes. Using it
-- sets the password and ends every session of the account.
local db = require "evently.db"
local crypto = require "evently.crypto"
local account_mail = require "domain.account_mail"
local users = require "domain.users"
local tokens = require "domain.tokens"
local rules = require "rules.auth"

local M = {}

--- Mails a reset token when email belongs to an account that may log in.
-- Known or not, the request costs one indexed read before the answer; the
-- token's row and the mail come after it, so a caller can tell neither from
-- the answer nor from its time whether the account exists. true | nil, err.
function M.request(email)
  local user, err = users.find_active(email)
  if user == nil then return nil, err end
  if not user then return true end
  account_mail.later(function()
    local token = crypto.random_token(32)
    local ok, ierr = db.query([[INSERT INTO password_resets (token_hash, user_id, expires_at)
        VALUES ($1, $2, now() + make_interval(mins => $3))]], crypto.sha256(token), user.id,
      rules.password_reset_minutes)
    if not ok then return nil, ierr end
    return "password.reset", { token = token, minutes = rules.password_reset_minutes }, user
  end)
  return true
end

-- The account a live reset token belongs to, or false.
local function holder(token)
  local id, err = db.value([[SELECT user_id FROM password_resets
      WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()]], crypto.sha256(token))
  if err then return nil, err end
  return id or false
end

--- Sets password for the account token was mailed to. Returns true, false
-- when the token is unknown, used or expired, or nil, err (the hasher busy,
-- the database). An unknown token costs one indexed read: the password is
-- hashed only for a live one, so made-up tokens cannot keep the hasher busy.
function M.confirm(token, password)
  local live, lerr = holder(token)
  if live == nil then return nil, lerr end
  if not live then return false end
  local hash, herr = crypto.hash_password(password) -- before the transaction: it takes a while
  if not hash then return nil, herr end
  local user_id, err = db.transaction(function(tx)
    local row, uerr = tx.one([[UPDATE password_resets SET used_at = now()
        WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id]], crypto.sha256(token))
    if uerr then error(uerr, 0) end
    if not row then return false end
    assert(tx.query("UPDATE users SET password_hash = $2 WHERE id = $1 AND disabled_at IS NULL", row.user_id, hash))
    -- every other reset link of the account dies with this one
    assert(tx.query("UPDATE password_resets SET used_at = now() WHERE user_id = $1 AND used_at IS NULL", row.user_id))
    return row.user_id
  end)
  if user_id == nil then return nil, err end
  if not user_id then return false end
  local n, rerr = tokens.revoke_all(user_id)
  if not n then return nil, rerr end
  return true
end

return M
