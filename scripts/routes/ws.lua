-- /ws (API.md "Notifications"): the user's live channel. The token comes as
-- ?token= (browsers cannot set headers on a WebSocket) or Authorization; the
-- server pushes JSON {type, payload, created_at} (ws.publish). Messages the
-- client sends are read and ignored: reading them is what notices a close.
local ws = require "evently.ws"
local auth = require "web.auth"

return function(app, base)
  app.get(base .. "/ws", function(req)
    if not req.headers.authorization and req.query.token then
      req.headers.authorization = "Bearer " .. req.query.token
    end
    local user = auth.user(req) -- 401 before any upgrade
    local conn, err = ws.upgrade(req, { user_id = user.id })
    if not conn then return ws.bad_handshake(err) end
    repeat until not conn:receive()
  end, "ws")
end
