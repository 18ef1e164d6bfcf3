--- ticket_limit: the operator's "max tickets per user per event"
-- (rules/booking.lua max_per_user), exact under any concurrency.
--
-- No counter table: every change to an event's confirmed bookings (a take, a
-- cancel, a waitlist conversion, the event's cancellation) holds the event
-- row's lock until it commits. A statement that starts after its transaction
-- locked that row therefore sees every committed booking of the event in its
-- snapshot, and nobody can add one before it commits. A limited take is two
-- statements in one transaction: lock the row (LOCK), then take with the
-- user's confirmed sum in the condition. Unlimited takes skip the lock
-- statement and cost nothing more than before. (Read in the same statement
-- as the lock, the sum would come from a snapshot taken before the wait.)
local rules = require "rules.booking"

local M = {}

local max = rules.max_per_user
if max ~= nil and (math.type(max) ~= "integer" or max < 1) then
  -- raised at load: `evently check` and a reload refuse the edited rules
  error("rules/booking.lua: max_per_user must be nil or an integer >= 1", 0)
end
--- The limit, or nil when there is none.
M.max = max

--- SQL: the user's ($2) confirmed tickets for the event ($1).
M.HELD = [[SELECT coalesce(sum(quantity), 0)::int FROM bookings
  WHERE event_id = $1 AND user_id = $2 AND status = 'confirmed']]

--- Locks the event row for the rest of transaction tx. true | nil, err.
function M.lock(tx, event_id)
  local ok, err = tx.query("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", event_id)
  if not ok then return nil, err end
  return true
end

--- The user's confirmed tickets for the event (read in the locked transaction
-- when it must be exact). held | nil, err.
function M.held(q, event_id, user_id)
  return q.value(M.HELD, event_id, user_id)
end

--- The refusal's details, for the problem document.
function M.refusal(held)
  return { max_per_user = max, held = held }
end

--- The answer to a refusal (routes): 409, not 422, since the request is
-- valid; the user's tickets for the event refuse it, and cancelling one
-- frees the allowance again.
function M.problem(info)
  return require("evently.problem").response(409, "limit-exceeded",
    "this would take you over the event's limit of " .. info.max_per_user .. " tickets per user",
    { max_per_user = info.max_per_user, held = info.held })
end

return M
