--- `evently dead-letters list|retry|drop [--group G] [ID...]`: the core reads
-- the options and runs this with the subcommand, the group ("" when none) and
-- the ids, on a migrated database. In-process dead letters (the dead_letters
-- table); with Kafka they are the <topic>.dlq topics. Returns nil, why on
-- failure (the command exits 1 with it).
local db = require "evently.db"
local stream = require "evently.stream"

local sub, group = ...
local ids = { select(3, ...) }
for i, id in ipairs(ids) do ids[i] = math.tointeger(tonumber(id)) end
if group == "" then group = nil end
local which = #ids > 0 and { ids = ids } or { group = group }

if sub == "list" then
  local rows, err = db.query([[SELECT d.id, d.consumer_group, d.topic, d.outbox_id, o.event_type, d.attempts,
      d.created_at, d.retry_requested_at IS NOT NULL AS marked, d.error
    FROM dead_letters d JOIN outbox o ON o.id = d.outbox_id
    WHERE ($1::text IS NULL OR d.consumer_group = $1) ORDER BY d.id]], group)
  if not rows then return nil, "cannot read the dead letters: " .. tostring(err) end
  print("id\tgroup\ttopic\tmessage\ttype\tattempts\tcreated_at\tmarked\terror")
  for _, r in ipairs(rows) do
    print(table.concat({ r.id, r.consumer_group, r.topic, r.outbox_id, r.event_type, r.attempts, r.created_at,
      tostring(r.marked), (r.error:gsub("[\r\n\t]", " ")) }, "\t"))
  end
  return
end

local n, err
if sub == "retry" then
  n, err = stream.retry_dead(which)
elseif sub == "drop" then
  n, err = stream.drop_dead(which)
end
if not n then return nil, "cannot " .. sub .. " the dead letters: " .. tostring(err) end
print(("%s %d dead letter%s"):format(sub == "retry" and "marked for retry" or "dropped", n, n == 1 and "" or "s"))
