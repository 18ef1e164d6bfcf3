--- notify: a domain event, written in the caller's transaction: the outbox row
-- (delivered by the relay) and, when it concerns a user, the in-app
-- notification.
local M = {}

function M.emit(tx, event_type, event_id, payload, user_id)
  local ok, err = tx.query("INSERT INTO outbox (event_type, aggregate_id, payload) VALUES ($1, $2, $3)",
    event_type, event_id, payload)
  if not ok then error(err, 0) end
  if user_id then
    ok, err = tx.query("INSERT INTO notifications (user_id, type, payload) VALUES ($1, $2, $3)",
      user_id, event_type, payload)
    if not ok then error(err, 0) end
  end
end

return M
