-- /ws (API.md "Notifications"): the user's live channel. The token comes as
-- ?token= (browsers cannot set headers on a WebSocket) or Authorization; the
-- server pushes JSON {type, payload, created_at} (ws.publish). Messages the
-- client sends are read and ignored: reading them is what notices a close.
-- A socket lives only as long as its token: revoked (logout) it closes at
-- once with 1008, expired it closes with 1008 when the expiry comes (looked
-- up again then, as other requests may have pushed it forward).
local ws = require "evently.ws"
local auth = require "web.auth"
local cache = require "evently.cache"
local crypto = require "evently.crypto"
local time = require "evently.time"
local tokens = require "domain.tokens"
local limit = require "evently.limit"
local rules = require "rules.ws"

local RETRY = 30    -- s: the database could not say; ask again

-- token hash -> { [conn] = true }: revocation reaches every socket opened with it
local by_token = {}
cache.on_invalidate(function(key)
  local conns = by_token[key:match("^token:(.+)$") or ""]
  if not conns then return end
  for conn in pairs(conns) do conn:close(1008, "token revoked") end
end)

local function watch(conn, hash)
  local conns = by_token[hash] or setmetatable({}, { __mode = "k" })
  by_token[hash] = conns
  conns[conn] = true
end

local function unwatch(conn, hash)
  local conns = by_token[hash]
  if not conns then return end
  conns[conn] = nil
  if next(conns) == nil then by_token[hash] = nil end
end

-- Seconds until the next look at the token; nil once it is no longer valid.
local function next_look(token)
  local left, err = tokens.seconds_left(token)
  if err then return RETRY end
  if not left or left <= 0 then return nil end
  return math.min(left + 0.5, rules.token_recheck_seconds)
end

return function(app, base)
  app.get(base .. "/ws", function(req)
    if not req.headers.authorization and req.query.token then
      req.headers.authorization = "Bearer " .. req.query.token
    end
    local ok, info = limit.check(rules.limits.connect_address, limit.address(req.peer))
    if not ok then return limit.response(info) end
    local user = auth.user(req) -- 401 before any upgrade
    ok, info = limit.check(rules.limits.connect_user, tostring(user.id))
    if not ok then return limit.response(info) end
    local token = req.token
    local conn, err = ws.upgrade(req, { user_id = user.id })
    if not conn then return ws.bad_handshake(err) end
    local hash = crypto.sha256(token)
    watch(conn, hash)
    local due = time.monotonic() + (next_look(token) or 0)
    while conn:is_open() do
      if time.monotonic() >= due then
        local wait = next_look(token)
        if not wait then
          conn:close(1008, "token expired")
          break
        end
        due = time.monotonic() + wait
      end
      local msg, kind = conn:receive(math.max(0.05, due - time.monotonic()))
      if msg == nil and kind ~= "timeout" then break end
    end
    unwatch(conn, hash)
  end, "ws")
end
