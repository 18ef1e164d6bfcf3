-- /admin/analytics (API.md "Admin analytics"): read from the replica, cached 30 s.
local problem = require "evently.problem"
local db = require "evently.db"
local cache = require "evently.cache"
local json = require "evently.json"
local auth = require "web.auth"

local TTL = 30

local function summary()
  local row, err = db.replica.one([[SELECT
      (SELECT count(*) FROM events) AS events,
      count(*) AS bookings,
      coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0)::bigint AS tickets_sold,
      coalesce(sum(total_cents) FILTER (WHERE status = 'confirmed'), 0)::bigint AS revenue_cents,
      count(*) FILTER (WHERE status = 'cancelled') AS cancellations
    FROM bookings]])
  if not row then return nil, err end
  row.cancellation_rate = row.bookings > 0 and row.cancellations / row.bookings or 0
  local top
  top, err = db.replica.query([[SELECT e.id AS event_id, e.name, sum(b.quantity)::bigint AS tickets_sold,
      sum(b.total_cents)::bigint AS revenue_cents
    FROM bookings b JOIN events e ON e.id = b.event_id WHERE b.status = 'confirmed'
    GROUP BY e.id, e.name ORDER BY tickets_sold DESC, e.id LIMIT 10]])
  if not top then return nil, err end
  row.top_events = json.array(top)
  return row
end

local function event_report(id)
  local row, err = db.replica.one([[SELECT e.id AS event_id, e.capacity, e.available,
      coalesce(sum(b.quantity) FILTER (WHERE b.status = 'confirmed'), 0)::bigint AS sold,
      count(b.id) AS bookings,
      count(b.id) FILTER (WHERE b.status = 'cancelled') AS cancellations,
      (SELECT count(*) FROM waitlist w WHERE w.event_id = e.id AND w.status = 'waiting') AS waitlist_waiting
    FROM events e LEFT JOIN bookings b ON b.event_id = e.id WHERE e.id = $1
    GROUP BY e.id]], id)
  if err then return nil, err end
  if not row then return false end
  row.utilization = row.capacity > 0 and row.sold / row.capacity or 0
  local days
  days, err = db.replica.query([[SELECT to_char(date_trunc('day', created_at), 'YYYY-MM-DD') AS date,
      sum(quantity)::bigint AS tickets, sum(total_cents)::bigint AS revenue_cents
    FROM bookings WHERE event_id = $1 AND status = 'confirmed' GROUP BY 1 ORDER BY 1]], id)
  if not days then return nil, err end
  row.sales_by_day = json.array(days)
  return row
end

return function(app, base)
  app.get(base .. "/admin/analytics/summary", function(req)
    auth.admin(req)
    local doc, err = cache.fetch("analytics:summary", TTL, summary)
    if not doc then return problem.unavailable("compute analytics", err) end
    json.array(doc.top_events)
    return doc
  end, "analytics.summary")

  app.get(base .. "/admin/analytics/events/:id", function(req)
    auth.admin(req)
    local id = require("web.params").id(req, "event")
    local doc, err = cache.fetch("analytics:event:" .. id, TTL, function() return event_report(id) end)
    if doc == nil then return problem.unavailable("compute analytics", err) end
    if not doc then return problem.response(404, "not-found", "no such event") end
    json.array(doc.sales_by_day)
    return doc
  end, "analytics.event")
end
