--- flows.recipients: who a domain event concerns.
local db = require "evently.db"

local M = {}

-- The holders told of an event's cancellation: one notification row each
-- (domain.notify), found through notifications_event_cancelled_idx.
M.HOLDERS = [[SELECT DISTINCT user_id FROM notifications
  WHERE type = 'event.cancelled' AND payload->>'event_id' = $1::text ORDER BY user_id]]

-- booking.cancelled with reason event.cancelled is told by event.cancelled
-- itself, once per holder, not once per booking.
function M.of(msg)
  local p = msg.payload or {}
  if msg.type == "event.cancelled" then
    local rows = assert(db.query(M.HOLDERS, p.event_id))
    local out = {}
    for i, r in ipairs(rows) do out[i] = r.user_id end
    return out
  end
  if msg.type == "booking.cancelled" and p.reason == "event.cancelled" then return {} end
  if p.user_id then return { p.user_id } end
  if p.waitlist_entry_id then -- offers written before the payload carried user_id
    local uid = db.value("SELECT user_id FROM waitlist WHERE id = $1", p.waitlist_entry_id)
    return uid and { uid } or {}
  end
  return {}
end

function M.users(ids)
  if #ids == 0 then return {} end
  return assert(db.query("SELECT id, email, name FROM users WHERE id = ANY($1::bigint[]) ORDER BY id",
    "{" .. table.concat(ids, ",") .. "}"))
end

return M
