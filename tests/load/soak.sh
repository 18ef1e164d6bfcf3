#!/usr/bin/env bash
# Soak (issue 14): a mixed on-sale workload at a steady rate for N minutes
# (tests/load/soak.lua: browsing, booking, cancelling, joining waitlists,
# converting waitlist offers, reading one's bookings; 64 connections, exponential waits of mean DELAY_MS,
# about 3,000 requests/s offered with the default 20 ms) with 200 WebSockets
# held open (ws_idle.py). Every minute: the workers' and Redis' RSS, that
# minute's p99, the main tables' size and Redis' memory. At the end it says
# whether RSS and p99 drift (the last 5 minutes against the first 5: RSS <=
# 1.1x, p99 <= 1.2x; with fewer than 10 minutes, the halves) and checks the
# booking invariant of every event in the database:
#   capacity = available + confirmed tickets + seats held for waitlist offers.
# Each minute also counts failed requests (5xx, socket errors, timeouts) and
# what Postgres did in the background that minute (autovacuum and autoanalyze
# runs, checkpoints), to tell a growing cost from background work.
# Exit status 1 when a request failed or the invariant is broken (CI runs a
# 2-minute soak); drift is a benchmark figure, reported, not an exit status.
#   usage: tests/load/soak.sh [minutes, default 30]
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${1:-30}
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18621
base=http://127.0.0.1:$port
trap 'kill $(cat $work/ws.pid 2>/dev/null) 2>/dev/null || true; kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null || true; sleep 3; rm -rf $work' EXIT

# one address registers every user and opens every socket: those limits are off
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_LIMIT_REGISTER_ADDRESS=off EVENTLY_WS_MAX_PER_USER=10 \
  EVENTLY_LIMIT_WS_CONNECT_USER=off EVENTLY_LIMIT_WS_CONNECT_ADDRESS=off \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
EVENTLY_HOME=$work/home "$bin" user create --admin --email soak@example.com --password soakpassword >/dev/null
admin=$(curl -s "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"soak@example.com","password":"soakpassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
for i in $(seq 1 200); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"s$i@example.com\",\"password\":\"soakpassword\",\"name\":\"S\"}" \
    | python3 -c 'import json,sys; d = json.load(sys.stdin); print(d["token"]); print(d["user"]["id"], file=sys.stderr)'
done >"$work/tokens" 2>"$work/uids"
# ten small events sell out within seconds: from then on their waitlists
# fill, cancellations offer the seats given back, and offers are converted
for i in $(seq 1 50); do
  capacity=10000; [ "$i" -gt 40 ] && capacity=40
  curl -s "$base/api/v1/events" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d "{\"name\":\"Soak $i\",\"venue\":\"Arena\",\"starts_at\":\"2031-01-01T20:00:00Z\",\"capacity\":$capacity,\"price_cents\":100,\"status\":\"published\",\"max_per_booking\":4}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
done >"$work/events"

python3 tests/load/ws_idle.py 127.0.0.1 $port "$work/tokens" 200 "$work/ws.ready" - \
  </dev/null >"$work/ws.log" 2>&1 &
echo $! >"$work/ws.pid"
for _ in $(seq 1 300); do [ -s "$work/ws.ready" ] && break; sleep 0.5; done

master=$(cat "$work/home/evently.pid")
rss_kb() { # pids... -> summed VmRSS in kB
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo $t
}
sql() { EVENTLY_HOME=$work/home "$bin" lua /dev/stdin "$@" 2>/dev/null; }
background() { # autovacuum + autoanalyze runs and checkpoints so far
  sql <<'LUA'
local db = require "evently.db"
local v = db.one([[SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint AS v
  FROM pg_stat_user_tables]])
local c = db.one("SELECT (checkpoints_timed + checkpoints_req)::bigint AS c FROM pg_stat_bgwriter")
io.write(string.format("%d %d", v.v, c.c))
LUA
}
sizes() {
  sql <<'LUA'
local db = require "evently.db"
local r = db.one([[SELECT pg_total_relation_size('bookings') / 1048576 AS b, pg_total_relation_size('outbox') / 1048576 AS o,
  pg_total_relation_size('notifications') / 1048576 AS n, pg_total_relation_size('waitlist') / 1048576 AS w]])
io.write(string.format("bookings %d MB, outbox %d MB, notifications %d MB, waitlist %d MB", r.b, r.o, r.n, r.w))
LUA
}

"$bin" version
echo "ws sockets open: $(cat "$work/ws.ready" 2>/dev/null || echo 0)"
printf "%-4s %10s %9s %6s %9s %10s %11s %4s %4s  %s\n" min "req/s" "p99 ms" failed "workers" "redis" "redis mem" \
  vac ckpt tables
read -r vac0 ckpt0 <<<"$(background || echo "0 0")"
failed_total=0
for m in $(seq 1 "$minutes"); do
  TOKENS=$work/tokens UIDS=$work/uids EVENTS=$work/events ADMIN=$admin DELAY_MS=${DELAY_MS:-20} \
    wrk -t2 -c64 -d60s --latency -s tests/load/soak.lua "$base" >"$work/wrk-$m.txt" 2>&1
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$m.txt")
  p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk-$m.txt")
  failed=$(awk '/^failed/ {print $2}' "$work/wrk-$m.txt")
  failed_total=$((failed_total + ${failed:-1}))
  read -r vac ckpt <<<"$(background || echo "$vac0 $ckpt0")"
  workers=$(rss_kb $(pgrep -P "$master" -x "$(cat /proc/$master/comm)"))
  redis_pid=$(pgrep -f "redis-server.*$work/home" | head -1 || true)
  redis=$(rss_kb "$redis_pid")
  rmem=$(redis-cli -s "$work/home/run/redis.sock" --no-auth-warning \
    -a "$(awk '/^requirepass/ {print $2}' "$work/home/redis/evently-redis.conf")" info memory 2>/dev/null \
    | awk -F: '/^used_memory:/ {printf "%d", $2 / 1024}' || true)
  printf "%-4s %10s %9s %6s %8sk %9sk %10sk %4s %4s  %s\n" "$m" "${rps:-0}" "${p99:-0}" "${failed:-?}" \
    "${workers:-0}" "${redis:-0}" "${rmem:-0}" $((vac - vac0)) $((ckpt - ckpt0)) "$(sizes || true)"
  vac0=$vac ckpt0=$ckpt
  echo "$m ${rps:-0} ${p99:-0} ${workers:-0} ${redis:-0}" >>"$work/samples"
done

# drift: the last 5 minutes against the first 5 (or the halves of a short run)
k=5; [ "$minutes" -lt 10 ] && k=$(( minutes / 2 ))
[ "$k" -lt 1 ] && k=1
awk -v k="$k" -v n="$minutes" '
  NR <= k       { fr += $4; fp += $3; fq += $5 }
  NR > n - k    { lr += $4; lp += $3; lq += $5 }
  END {
    printf "drift (last %d min / first %d): workers RSS %.2f (goal <= 1.1), Redis RSS %.2f, p99 %.2f (goal <= 1.2)\n",
      k, k, lr / fr, lq / fq, lp / fp
    ok = (lr / fr <= 1.1) && (lp / fp <= 1.2)
    print ok ? "drift: within the goals" : "drift: NOT within the goals"
  }' "$work/samples"

sleep 5 # in-flight requests end; their consumers catch up
SOAK_BROKEN=$work/broken sql <<'LUA'
local db = require "evently.db"
local bad = db.query([[SELECT e.id, e.capacity, e.available,
    (SELECT coalesce(sum(quantity), 0) FROM bookings b WHERE b.event_id = e.id AND b.status = 'confirmed') AS sold,
    (SELECT coalesce(sum(quantity), 0) FROM inventory_holds h WHERE h.pool = 'seats' AND h.key = e.id
       AND h.state = 'held') AS held
  FROM events e WHERE e.name LIKE 'Soak %']])
local broken, sold = 0, 0
for _, r in ipairs(bad) do
  sold = sold + r.sold
  if r.capacity ~= r.available + r.sold + r.held then
    broken = broken + 1
    print(("invariant broken: event %d capacity %d available %d sold %d held %d"):format(r.id, r.capacity,
      r.available, r.sold, r.held))
  end
end
print(("invariant: %d of %d events hold capacity = available + sold + held (%d tickets sold)"):format(
  #bad - broken, #bad, sold))
if broken > 0 or #bad == 0 then io.open(os.getenv("SOAK_BROKEN"), "w"):write("broken\n"):close() end
local w = db.one([[SELECT count(*) FILTER (WHERE b.waitlist_entry_id IS NOT NULL) AS converted,
    (SELECT count(*) FROM waitlist) AS joined, (SELECT count(*) FROM waitlist WHERE status = 'offered') AS offered
  FROM bookings b]])
print(("waitlist: %d entries joined, %d offers open, %d converted into bookings"):format(w.joined, w.offered,
  w.converted))
LUA

echo "failed requests: $failed_total"
if [ "$failed_total" -ne 0 ]; then
  grep -h '^failed\|^last_failed' "$work"/wrk-*.txt | grep -v '^failed 0 ' || true
  grep -E ' (error|warn) ' "$work/ev.log" | tail -20 || true
  grep -A3 'ERROR' "$work/home/log/postgres.log" | tail -40 || true
fi
[ "$failed_total" -eq 0 ] && [ ! -e "$work/broken" ]
