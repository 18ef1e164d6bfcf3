--- events: the event catalogue. Public reads go through the cache (5 minutes,
-- invalidated on every change); admin reads and all writes go to Postgres.
local db = require "evently.db"
local cache = require "evently.cache"
local json = require "evently.json"
local pages = require "domain.pages"

local M = {}

local COLUMNS = [[id, name, description, venue, starts_at, ends_at, capacity, available,
  price_cents, currency, max_per_booking, status, sales_start, sales_end, created_at, updated_at]]
M.COLUMNS = COLUMNS
local TTL = 300

-- Fields an admin may set (never id, available, created_at, updated_at).
M.WRITABLE = { "name", "description", "venue", "starts_at", "ends_at", "capacity", "price_cents",
  "currency", "max_per_booking", "status", "sales_start", "sales_end" }

local function changed(id)
  cache.invalidate("event:" .. id)
  cache.invalidate("events:list:", true)
end
M.changed = changed

--- After a commit that may give seats back (a cancellation, an offer expired
-- or withdrawn, a capacity change): the shared sold-out gate is opened
-- first, then every worker hears the change (domain/shared_gate.lua).
function M.reopened(id)
  require("domain.shared_gate").open(id)
  changed(id)
end

function M.create(f)
  local row, err = db.one([[INSERT INTO events (name, description, venue, starts_at, ends_at, capacity,
      available, price_cents, currency, max_per_booking, status, sales_start, sales_end)
    VALUES ($1, coalesce($2, ''), $3, $4, $5, $6, $6, $7, coalesce($8, 'EUR'), coalesce($9, 10),
      coalesce($10, 'draft'), $11, $12)
    RETURNING ]] .. COLUMNS,
    f.name, f.description, f.venue, f.starts_at, f.ends_at, f.capacity, f.price_cents, f.currency,
    f.max_per_booking, f.status, f.sales_start, f.sales_end)
  if row then changed(row.id) end
  return row, err
end

--- Reads one event from Postgres (admin view, or the loader of the cache).
function M.get(id)
  return db.one("SELECT " .. COLUMNS .. " FROM events WHERE id = $1", id)
end

--- The public view: published and cancelled events only, cached.
function M.get_public(id)
  local ev, err = cache.fetch("event:" .. id, TTL, function()
    local row, lerr = M.get(id)
    if lerr then return nil, lerr end
    return row or false
  end)
  if err then return nil, err end
  if not ev or ev.status == "draft" then return nil end
  return ev
end

--- Applies the given fields. Capacity is the seats pool's resize (available
-- moves by the same amount, never below what is sold or held): refused, it
-- answers nil, "capacity-below-sold".
function M.update(id, f)
  local sets, args = {}, { id }
  for _, name in ipairs(M.WRITABLE) do
    if f[name] ~= nil and name ~= "capacity" then
      args[#args + 1] = f[name]
      sets[#sets + 1] = ("%s = $%d"):format(name, #args)
    end
  end
  if #sets == 0 and f.capacity == nil then return M.get(id) end
  local sql = #sets > 0
    and "UPDATE events SET " .. table.concat(sets, ", ") .. ", updated_at = now() WHERE id = $1 RETURNING " .. COLUMNS
    or "SELECT " .. COLUMNS .. " FROM events WHERE id = $1"
  local ok, row, err = pcall(db.transaction, function(tx)
    if f.capacity ~= nil then
      local resized, e = require("domain.seats").pool:resize(tx, id, f.capacity)
      if e then error(e, 0) end
      if not resized then return nil end -- below what is sold (or no such event): nothing changed
    end
    local r, e = tx.one(sql, table.unpack(args))
    if e then error(e, 0) end
    if r and f.capacity ~= nil then -- seats that come back with a larger capacity go to the waitlist first
      require("domain.waitlist").offer(tx, id)
      r = tx.one("SELECT " .. COLUMNS .. " FROM events WHERE id = $1", id)
    end
    return r
  end)
  if not ok then return nil, row end
  if err then return nil, err end
  if not row then
    local exists = M.get(id)
    if exists then return nil, "capacity-below-sold", exists end
    return nil
  end
  M.reopened(id)
  return row
end

--- Cancels the event, its bookings and waitlist entries (holders notified).
function M.cancel(id)
  local res, err = require("domain.bookings").cancel_event(id)
  if not res then return nil, err end
  M.reopened(id) -- the gate must not answer "sold out" for a cancelled event
  return M.get(id)
end

local function like_escape(s)
  return (s:gsub("[\\%%_]", "\\%0"))
end

--- Lists events. filter: {q, from, to, status, page, size, admin}. Returns
-- {items, page, size, total}. Public lists are cached and never show drafts.
function M.list(filter)
  local where, args = {}, {}
  local function arg(v) args[#args + 1] = v; return "$" .. #args end
  if not filter.admin then where[#where + 1] = "status <> 'draft'" end
  if filter.status then where[#where + 1] = "status = " .. arg(filter.status) end
  if filter.q then
    local p = arg("%" .. like_escape(filter.q) .. "%")
    where[#where + 1] = ("(name ILIKE %s OR venue ILIKE %s)"):format(p, p)
  end
  if filter.from then where[#where + 1] = "starts_at >= " .. arg(filter.from) end
  if filter.to then where[#where + 1] = "starts_at <= " .. arg(filter.to) end
  if filter.status == "draft" and not filter.admin then -- nothing to read: drafts are the admins'
    return { items = json.array({}), page = filter.page, size = filter.size, total = 0 }
  end
  -- a search is planned with its pattern every time (evently.db: "custom plan"):
  -- the generic plan of a prepared search walked every event (plans_spec)
  local from = "events" .. (filter.q and " /* custom plan */" or "")
    .. (#where > 0 and (" WHERE " .. table.concat(where, " AND ")) or "")
  local function load()
    local rows, total = pages.fetch(COLUMNS, from, args, "starts_at, id", filter.page, filter.size)
    if not rows then return nil, total end
    local items = json.array({})
    for i, r in ipairs(rows) do items[i] = r end
    return { items = items, page = filter.page, size = filter.size, total = total }
  end
  if filter.admin then return load() end
  -- the query is the client's to choose: its results stay in this worker's
  -- bounded L1 (a family), never in Redis
  local key = "events:list:" ..
    json.encode({ filter.q, filter.from, filter.to, filter.status, filter.page, filter.size })
  return cache.fetch(key, TTL, load, { family = "events:list:" })
end

return M
