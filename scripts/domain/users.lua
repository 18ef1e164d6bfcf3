--- users: accounts. Never returns password hashes to callers.
local db = require "evently.db"
local crypto = require "evently.crypto"

local M = {}

local PUBLIC = "id, email, name, role, created_at"

local rules = require "rules.auth"

-- An RFC 5321 mailbox and nothing else: dot-atoms of atext before the @, a
-- host name of two or more labels after it. No display name, angle brackets,
-- quotes, comments or spaces: "x<victim@y.com>" would be read by a mailer as
-- victim@y.com, so it is refused here.
local ATEXT = "^[%w!#%$%%&'%*%+%-/=%?%^_`{|}~]+$"
local LABEL = "^%w[%w%-]*$"
function M.valid_email(s)
  local at = s:find("@", 1, true)
  if not at or s:find("@", at + 1, true) then return false end
  local lp, domain = s:sub(1, at - 1), s:sub(at + 1)
  if #lp == 0 or #lp > 64 or #domain == 0 or #domain > 253 then return false end
  for atom in (lp .. "."):gmatch("(.-)%.") do
    if not atom:match(ATEXT) then return false end -- also an empty one: a leading, trailing or double dot
  end
  local labels = 0
  for label in (domain .. "."):gmatch("(.-)%.") do
    if #label > 63 or not label:match(LABEL) or label:sub(-1) == "-" then return false end
    labels = labels + 1
  end
  return labels >= 2
end

--- Reads a new account's email, password and name from a validator
-- (web/validate.lua): the checks registration and `evently user create` share.
function M.read_new_account(v)
  local email = v:string("email",
    { required = true, max = 254, valid = M.valid_email, invalid_message = "must be an email address" })
  local password = v:string("password",
    { required = true, min = rules.min_password_length, max = rules.max_password_length })
  local name = v:string("name", { required = true, min = 1, max = 200 })
  return email, password, name
end

--- Creates a user with role "user" (or role: "admin"). Returns user, or nil,
-- "duplicate" | "busy" | "timeout" (the hasher could not take it now) | err.
-- unverified: the address is not confirmed yet (rules.auth.verify_email);
-- otherwise it counts as confirmed now.
function M.register(email, password, name, role, unverified)
  local hash, herr = crypto.hash_password(password)
  if not hash then return nil, herr end
  local row, err = db.one([[INSERT INTO users (email, name, password_hash, role, email_verified_at)
      VALUES (lower($1), $2, $3, $4, CASE WHEN $5 THEN NULL ELSE now() END) RETURNING ]] .. PUBLIC,
    email, name, hash, role or "user", unverified == true)
  if not row then
    if err and err.sqlstate == "23505" then return nil, "duplicate" end
    return nil, err
  end
  return row
end

-- A hash of a random password: unknown emails are verified against it, so a
-- login takes the same time whether or not the account exists. Made on the
-- first unknown email; until the hasher can make it, that login is "busy".
local decoy

--- Returns the user when email and password match; nil when they do not;
-- nil, err when the password could not be checked: "busy" | "timeout" (the
-- hasher), or a database error. An unknown email is checked against the
-- decoy, so it is busy exactly when a known one would be (no oracle).
function M.authenticate(email, password)
  local row, err = db.one("SELECT " .. PUBLIC .. ", password_hash, disabled_at IS NOT NULL AS disabled,"
    .. " email_verified_at IS NULL AS unverified FROM users WHERE email = lower($1)", email)
  if err then return nil, err end
  if not row then
    if not decoy then
      local h, herr = crypto.hash_password(crypto.random_token())
      if not h then return nil, herr end
      decoy = decoy or h
    end
    local _, verr = crypto.verify_password(decoy, password)
    return nil, verr
  end
  local ok, verr = crypto.verify_password(row.password_hash, password)
  if ok == nil then return nil, verr end
  if not ok then return nil end
  row.password_hash = nil
  return row -- row.disabled: the password is right, but the account may not log in
end

--- The password checked the way a login checks it, for a user known by id
-- (a password change): true | false | nil, err.
function M.check_password(user_id, password)
  local row, err = db.one("SELECT password_hash FROM users WHERE id = $1", user_id)
  if not row then return nil, err or "no such user" end
  return crypto.verify_password(row.password_hash, password)
end

--- Sets a new password (hashed). true | nil, err ("busy", "timeout": the hasher).
function M.set_password(user_id, password)
  local hash, herr = crypto.hash_password(password)
  if not hash then return nil, herr end
  local res, err = db.query("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, hash)
  if not res then return nil, err end
  return res.affected == 1
end

--- Disables (true) or enables (false) an account (in transaction q, when
-- given). Returns the public user with `disabled`, false when there is no
-- such user, or nil, err.
function M.set_disabled(user_id, disabled, q)
  local row, err = (q or db).one("UPDATE users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END"
    .. " WHERE id = $1 RETURNING " .. PUBLIC .. ", disabled_at IS NOT NULL AS disabled", user_id, disabled)
  if err then return nil, err end
  if not row then return false end
  local u = M.public(row)
  u.disabled = row.disabled
  return u
end

-- An address confirmation code: "<user id>.<expiry, unix s>.<mac>", the MAC
-- (crypto.sign) over those and the address, so it works for that address
-- only, until it expires, and needs no table.
local function verification_message(user_id, email, expires)
  return ("verify-email:%d:%s:%d"):format(user_id, email, expires)
end

--- A code confirming user's address for `seconds`. code | nil, err.
function M.verification_code(user, seconds)
  local expires = math.floor(require("evently.time").now()) + seconds
  local mac, err = crypto.sign(verification_message(user.id, user.email, expires))
  if not mac then return nil, err end
  return ("%d.%d.%s"):format(user.id, expires, mac)
end

--- Confirms the address a code was made for: true, false (unknown, expired,
-- or the address changed since), or nil, err.
function M.verify_email(code)
  local id, expires, mac = code:match("^(%d+)%.(%d+)%.(%x+)$")
  id, expires = math.tointeger(tonumber(id)), math.tointeger(tonumber(expires))
  if not (id and expires) or expires < require("evently.time").now() then return false end
  local row, err = db.one("SELECT email FROM users WHERE id = $1", id)
  if err then return nil, err end
  if not row or not crypto.verify(verification_message(id, row.email, expires), mac) then
    return false
  end
  local ok, uerr = db.query("UPDATE users SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = $1", id)
  if not ok then return nil, uerr end
  return true
end

--- The account with this email that may log in but has not confirmed its
-- address, or false.
function M.find_unverified(email)
  local row, err = db.one([[SELECT id, email, name FROM users
      WHERE email = lower($1) AND disabled_at IS NULL AND email_verified_at IS NULL]], email)
  if err then return nil, err end
  return row or false
end

--- id, email, name of the account with this email that may log in, or false.
function M.find_active(email)
  local row, err = db.one("SELECT id, email, name FROM users WHERE email = lower($1) AND disabled_at IS NULL", email)
  if err then return nil, err end
  return row or false
end

function M.public(row)
  return { id = row.id, email = row.email, name = row.name, role = row.role, created_at = row.created_at }
end

return M
