--- users: accounts. Never returns password hashes to callers.
local db = require "evently.db"
local crypto = require "evently.crypto"

local M = {}

local PUBLIC = "id, email, name, role, created_at"

--- Creates a user with role "user". Returns user, or nil, "duplicate" | err.
function M.register(email, password, name)
  local hash, herr = crypto.hash_password(password)
  if not hash then return nil, herr end
  local row, err = db.one("INSERT INTO users (email, name, password_hash) VALUES (lower($1), $2, $3) RETURNING " .. PUBLIC,
    email, name, hash)
  if not row then
    if err and err.sqlstate == "23505" then return nil, "duplicate" end
    return nil, err
  end
  return row
end

-- A hash of a random password: unknown emails are verified against it, so a
-- login takes the same time whether or not the account exists.
local decoy

--- Returns the user when email and password match, else nil (and err on failure).
function M.authenticate(email, password)
  local row, err = db.one("SELECT " .. PUBLIC .. ", password_hash FROM users WHERE email = lower($1)", email)
  if err then return nil, err end
  if not row then
    decoy = decoy or crypto.hash_password(crypto.random_token())
    crypto.verify_password(decoy, password)
    return nil
  end
  if not crypto.verify_password(row.password_hash, password) then return nil end
  row.password_hash = nil
  return row
end

function M.public(row)
  return { id = row.id, email = row.email, name = row.name, role = row.role, created_at = row.created_at }
end

return M
