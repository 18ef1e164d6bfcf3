--- idempotency: Idempotency-Key for POST /bookings (API.md).
-- claim() commits a marker first, so a concurrent duplicate sees "in flight"
-- (409) instead of waiting; the answer is stored in the same transaction as
-- the booking (store(tx, ...)), so a booking never exists without its stored
-- answer. A claim whose request died (no answer after 60 s) may be taken over.
local db = require "evently.db"
local crypto = require "evently.crypto"

local M = {}

function M.valid(key)
  return type(key) == "string" and #key >= 1 and #key <= 255 and not key:find("[^\32-\126]")
end

function M.hash(req)
  return crypto.sha256(req.method .. " " .. req.path .. "\n" .. req.body)
end

--- Returns "new" (ours to process), "in-flight", "mismatch" (same key, other
-- body), or "replay", status, body; nil, err when the database fails.
function M.claim(user_id, key, hash)
  local row, err = db.one([[INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3)
      ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, created_at = now()
        WHERE idempotency_keys.status IS NULL AND idempotency_keys.created_at < now() - interval '60 seconds'
          AND idempotency_keys.request_hash = EXCLUDED.request_hash
      RETURNING 1 AS claimed]], user_id, key, hash)
  if err then return nil, err end
  if row then return "new" end
  local prior
  prior, err = db.one("SELECT request_hash, status, response FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    user_id, key)
  if err then return nil, err end
  if not prior then return "in-flight" end -- released between our two statements: try again later
  if prior.request_hash ~= hash then return "mismatch" end
  if prior.status == db.null then return "in-flight" end
  return "replay", prior.status, prior.response
end

--- true when user_id used key before (whatever became of it), false when not;
-- nil, err when the database fails. A read: nothing is claimed.
function M.known(user_id, key)
  local row, err = db.one("SELECT 1 AS known FROM idempotency_keys WHERE user_id = $1 AND key = $2", user_id, key)
  if err then return nil, err end
  return row ~= nil
end

--- Stores the answer (q: db or a transaction).
function M.store(q, user_id, key, status, body)
  return q.query("UPDATE idempotency_keys SET status = $3, response = $4 WHERE user_id = $1 AND key = $2",
    user_id, key, status, body)
end

--- Forgets a claim whose request failed without an answer worth keeping (5xx).
function M.release(user_id, key)
  return db.query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status IS NULL", user_id, key)
end

return M
