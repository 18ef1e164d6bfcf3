--- retention: old rows go, so the tables grow with the work at hand and not
-- with history. Worker 0 of each instance prunes every rules.every_seconds;
-- each DELETE takes at most rules.batch rows, and a run at most ROUNDS
-- batches per table, so a backlog drains over several runs instead of in one
-- long statement. SKIP LOCKED: instances share the work and nobody waits on a
-- row a request holds. The stream's own tables (outbox, dead letters) are
-- pruned by evently.stream, which knows who still needs a row.
local db = require "evently.db"
local time = require "evently.time"
local log = require "evently.log"
local runtime = require "evently.runtime"
local stream = require "evently.stream"

local M = {}

local ROUNDS = 10
local DAY, HOUR = 86400, 3600

-- name, the rows that may go ($1: their age in seconds), and the rule
-- (with its unit) that sets the age.
local TABLES = {
  { "idempotency_keys", "created_at < now() - make_interval(secs => $1)", "idempotency_hours", HOUR },
  { "auth_tokens", "coalesce(revoked_at, expires_at) < now() - make_interval(secs => $1)", "tokens_days", DAY },
  { "password_resets", "expires_at < now() - make_interval(secs => $1)", "tokens_days", DAY },
  { "inventory_holds", [[settled_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM waitlist w WHERE w.hold_id = inventory_holds.id)]], "holds_days", DAY },
  { "notifications", "read_at < now() - make_interval(secs => $1)", "notifications_read_days", DAY },
  { "notifications", "created_at < now() - make_interval(secs => $1)", "notifications_days", DAY },
  { "sent_emails", "sent_at < now() - make_interval(secs => $1)", "sent_emails_days", DAY },
}

M.TABLES = TABLES

local function prune_table(t, rules)
  local name, where, rule, unit = t[1], t[2], t[3], t[4]
  local sql = "DELETE FROM " .. name .. " WHERE ctid = ANY(ARRAY(SELECT ctid FROM " .. name ..
    " WHERE " .. where .. " LIMIT $2 FOR UPDATE SKIP LOCKED))"
  local total = 0
  for _ = 1, ROUNDS do
    local res, err = db.query(sql, rules[rule] * unit, rules.batch)
    if not res then return total, err end
    total = total + res.affected
    if res.affected < rules.batch then break end
  end
  return total
end

--- One run: deletes what the rules let go. Returns {table = rows deleted};
-- a table whose DELETE failed is logged and left for the next run.
function M.run(rules)
  rules = rules or require "rules.retention"
  local done = {}
  for _, t in ipairs(TABLES) do
    local n, err = prune_table(t, rules)
    done[t[1]] = (done[t[1]] or 0) + n
    if err then log.warn("retention: %s: %s", t[1], tostring(err)) end
  end
  for _ = 1, ROUNDS do
    local r, err = stream.prune { outbox_seconds = rules.outbox_days * DAY,
      dead_letters_seconds = rules.dead_letters_days * DAY, batch = rules.batch }
    if not r then
      log.warn("retention: the stream's tables: %s", tostring(err))
      break
    end
    done.outbox = (done.outbox or 0) + r.outbox
    done.dead_letters = (done.dead_letters or 0) + r.dead_letters
    if r.outbox < rules.batch and r.dead_letters < rules.batch then break end
  end
  local sum = 0
  for _, n in pairs(done) do sum = sum + n end
  if sum > 0 then runtime.count("evently_retention_deleted_total", sum) end
  return done
end

--- Starts the job on worker 0 (each instance has one).
function M.start()
  if runtime.worker().slot ~= 0 then return end
  local rules = require "rules.retention"
  time.every(rules.every_seconds, function() M.run(rules) end)
end

return M
