-- #pg: domain/retention.lua and stream.prune delete what the rules let go and
-- keep what is recent or still needed (referenced, not yet consumed).
local db = require "evently.db"
local time = require "evently.time"
local retention = require "domain.retention"

local RULES = { every_seconds = 60, batch = 2, idempotency_hours = 48, tokens_days = 7, holds_days = 7,
  notifications_read_days = 90, notifications_days = 365, sent_emails_days = 30, outbox_days = 7,
  dead_letters_days = 30 }

describe("domain.retention #pg", function()
  local tag = tostring(math.floor(time.now() * 1000))
  local user, event_id
  local GROUP = "retention-spec-" .. tag

  local function ago(days) return string.format("now() - interval '%d days'", days) end
  local function exists(sql, ...) return db.value("SELECT count(*) FROM " .. sql, ...) > 0 end

  setup(function()
    user = assert(db.value([[INSERT INTO users (email, name, password_hash) VALUES ($1, 'R', 'x') RETURNING id]],
      "retention-" .. tag .. "@example.com"))
    event_id = assert(db.value([[INSERT INTO events (name, venue, starts_at, capacity, available, price_cents)
      VALUES ('R', 'V', now() + interval '1 day', 10, 10, 0) RETURNING id]]))
    -- idempotency keys: 3 days old (goes), 1 day old (kept: API.md promises 24 h)
    assert(db.query([[INSERT INTO idempotency_keys (user_id, key, request_hash, status, created_at) VALUES
      ($1, 'old', 'h', 201, ]] .. ago(3) .. [[), ($1, 'new', 'h', 201, ]] .. ago(1) .. ")", user))
    -- tokens: expired 8 days ago, revoked 8 days ago (go); expired yesterday, live (kept)
    assert(db.query([[INSERT INTO auth_tokens (token_hash, user_id, expires_at, revoked_at) VALUES
      ($2 || 'expired-old', $1, ]] .. ago(8) .. [[, NULL),
      ($2 || 'revoked-old', $1, now() + interval '1 day', ]] .. ago(8) .. [[),
      ($2 || 'expired-new', $1, ]] .. ago(1) .. [[, NULL),
      ($2 || 'live', $1, now() + interval '1 day', NULL)]], user, tag))
    -- holds: settled long ago (goes), settled long ago but a waitlist entry points at it, held (kept)
    local settled = "('seats', $1, $2, 1, 'expired', " .. ago(9) .. ", " .. ago(9) .. ", " .. ago(8) .. ")"
    assert(db.query([[INSERT INTO inventory_holds (pool, key, owner, quantity, state, expires_at, created_at,
      settled_at) VALUES ]] .. settled .. ", " .. settled, event_id, user))
    assert(db.query([[INSERT INTO inventory_holds (pool, key, owner, quantity, expires_at)
      VALUES ('seats', $1, $2, 1, now() + interval '1 hour')]], event_id, user))
    assert(db.query([[INSERT INTO waitlist (event_id, user_id, quantity, status, hold_id)
      VALUES ($1, $2, 1, 'expired', (SELECT min(id) FROM inventory_holds WHERE key = $1 AND state = 'expired'))]],
      event_id, user))
    -- notifications: read 100 days ago (goes), unread 100 days (kept), unread 400 days (goes)
    assert(db.query([[INSERT INTO notifications (user_id, type, payload, created_at, read_at) VALUES
      ($1, 'read-old', '{}', ]] .. ago(100) .. ", " .. ago(100) .. [[),
      ($1, 'unread-100', '{}', ]] .. ago(100) .. [[, NULL),
      ($1, 'unread-400', '{}', ]] .. ago(400) .. [[, NULL)]], user))
    assert(db.query("INSERT INTO sent_emails (message_id, user_id, sent_at) VALUES (-1, $1, " .. ago(31) ..
      "), (-2, $1, now())", user))
    -- outbox: below every group's position (goes); above a group's position (kept, not consumed);
    -- old but dead-lettered recently (kept); recent (kept)
    assert(db.query([[INSERT INTO stream_offsets (consumer_group, topic, last_txid, last_id)
      VALUES ($1, 'booking-confirmed', 1, 0)]], GROUP))
    assert(db.query([[INSERT INTO outbox (event_type, aggregate_id, payload, created_at, txid) VALUES
      ('spec.consumed', $1, '{}', ]] .. ago(8) .. [[, 0),
      ('spec.pending', $1, '{}', ]] .. ago(8) .. [[, 2),
      ('spec.dead', $1, '{}', ]] .. ago(8) .. [[, 0),
      ('spec.recent', $1, '{}', now(), 0)]], event_id))
    assert(db.query([[INSERT INTO dead_letters (consumer_group, topic, outbox_id, attempts, error)
      SELECT $1, 'booking-confirmed', id, 5, 'x' FROM outbox WHERE aggregate_id = $2 AND event_type = 'spec.dead']],
      GROUP, event_id))
  end)

  teardown(function()
    db.query("DELETE FROM dead_letters WHERE consumer_group = $1", GROUP)
    db.query("DELETE FROM stream_offsets WHERE consumer_group = $1", GROUP)
  end)

  it("deletes what the rules let go, in batches, and keeps the rest", function()
    local done = retention.run(RULES)
    assert.is_true(done.auth_tokens >= 2 and done.notifications >= 2 and done.outbox >= 1)
    assert.is_false(exists("idempotency_keys WHERE user_id = $1 AND key = 'old'", user))
    assert.is_true(exists("idempotency_keys WHERE user_id = $1 AND key = 'new'", user))
    assert.are.equal(tag .. "expired-new," .. tag .. "live",
      db.value("SELECT string_agg(token_hash, ',' ORDER BY token_hash) FROM auth_tokens WHERE user_id = $1", user))
    assert.are.equal(2, db.value("SELECT count(*) FROM inventory_holds WHERE key = $1", event_id))
    assert.is_true(exists("inventory_holds h JOIN waitlist w ON w.hold_id = h.id WHERE h.key = $1", event_id))
    assert.are.equal("unread-100", db.value("SELECT string_agg(type, ',') FROM notifications WHERE user_id = $1", user))
    assert.is_false(exists("sent_emails WHERE message_id = -1 AND user_id = $1", user))
    assert.is_true(exists("sent_emails WHERE message_id = -2 AND user_id = $1", user))
    assert.are.equal("spec.dead,spec.pending,spec.recent", db.value(
      "SELECT string_agg(event_type, ',' ORDER BY event_type) FROM outbox WHERE aggregate_id = $1", event_id))
  end)

  it("lets the stream's rows go once no one needs them", function()
    db.query("UPDATE dead_letters SET created_at = " .. ago(31) .. " WHERE consumer_group = $1", GROUP)
    db.query("UPDATE stream_offsets SET last_txid = 3 WHERE consumer_group = $1", GROUP)
    retention.run(RULES)
    assert.is_false(exists("dead_letters WHERE consumer_group = $1", GROUP))
    assert.are.equal("spec.recent", db.value(
      "SELECT string_agg(event_type, ',') FROM outbox WHERE aggregate_id = $1", event_id))
  end)

  it("finds old rows through an index, so a run costs what it deletes, not the table's size", function()
    local wheres = {}
    for _, t in ipairs(retention.TABLES) do wheres[#wheres + 1] = { t[1], t[2] } end
    wheres[#wheres + 1] = { "outbox", "created_at < now() - make_interval(secs => $1)" }
    wheres[#wheres + 1] = { "dead_letters", "created_at < now() - make_interval(secs => $1)" }
    for _, w in ipairs(wheres) do
      local plan = db.transaction(function(tx)
        assert(tx.query("SET LOCAL enable_seqscan = off")) -- a small table would be scanned anyway
        local rows = assert(tx.query("EXPLAIN SELECT ctid FROM " .. w[1] .. " WHERE " .. w[2] .. " LIMIT 10", 86400))
        local lines = {}
        for i, r in ipairs(rows) do lines[i] = r["QUERY PLAN"] end
        return table.concat(lines, "\n")
      end)
      assert.falsy(plan:find("Seq Scan", 1, true), w[1] .. ": " .. plan)
    end
  end)
end)
