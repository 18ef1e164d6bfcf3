#!/usr/bin/env bash
# The sold-out stall of issue 12 (item 6), reproduced: 20,000 users flood a
# sold-out event (wrk -c64, tests/load/booking.lua walks the tokens in order).
# Run 1 is cut off while Redis is stopped for a second, so requests that were
# loading their token (cache.fetch's single-flight leaders) are abandoned by
# their clients mid-load. Run 2 floods the same tokens again. Before the fix
# every connection that reached an abandoned token parked for 10 s, silently
# (the leader's in-flight mark was never cleared); now no answer may take
# over a second. Prints answers per second and how many took over 1 s.
#   usage: tests/load/stall.sh [seconds of run 2, default 14]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18778; base=http://127.0.0.1:$port
SECS=${1:-${SECS:-14}}
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=$work/access.log EVENTLY_DB_POOL_MAX=20 EVENTLY_LIMIT_REGISTER_ADDRESS=off \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
EVENTLY_HOME=$work/home "$bin" user create --admin --email bench@example.com --password benchpassword >/dev/null 2>&1
admin=$(curl -s "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"bench@example.com","password":"benchpassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
ev=$(curl -s "$base/api/v1/events" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"name":"Hot","venue":"S","starts_at":"2031-01-01T20:00:00Z","capacity":1,"price_cents":100,"status":"published","max_per_booking":10}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -s -o /dev/null -w "sell the one seat: %{http_code}\n" "$base/api/v1/bookings" -H "Authorization: Bearer $admin" \
  -H 'Content-Type: application/json' -d "{\"event_id\":$ev,\"quantity\":1}"
TOKFILE=$work/tokens EVENTLY_HOME=$work/home "$bin" lua /dev/stdin 2>/dev/null <<'LUA'
local db = require "evently.db"
assert(db.query([[INSERT INTO users (email, name, password_hash)
  SELECT 'u' || g || '@example.com', 'U', 'x' FROM generate_series(1, 20000) g]]))
assert(db.query([[INSERT INTO auth_tokens (token_hash, user_id, expires_at)
  SELECT encode(sha256(('tok' || u.id)::bytea), 'hex'), u.id, now() + interval '1 day'
  FROM users u WHERE u.email LIKE 'u%@example.com']]))
local rows = assert(db.query([[SELECT 'tok' || id AS t FROM users WHERE email LIKE 'u%@example.com' ORDER BY id]]))
local f = io.open(os.getenv("TOKFILE"), "w")
for _, r in ipairs(rows) do f:write(r.t, "\n") end
f:close()
LUA
redis_pid=""
for p in /proc/[0-9]*; do
  c=$(readlink "$p/cwd" 2>/dev/null || true); a=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null || true)
  case "$c $a" in *"$work"*redis-server*|*redis-server*"$work"*) redis_pid=${p#/proc/};; esac
done
[ -n "$redis_pid" ] || { echo "no redis pid"; exit 1; }
echo "redis pid $redis_pid"
per_second() {
  python3 - "$work/access.log" <<'PY'
import json, sys, collections
c = collections.Counter(); slow = 0
for line in open(sys.argv[1]):
    try:
        d = json.loads(line); c[int(float(d["time"]))] += 1; slow += d["duration_ms"] > 1000
    except Exception: pass
if c:
    t0 = min(c)
    print("answers/s:", [c.get(t0 + i, 0) for i in range(max(c) - t0 + 1)], " answers > 1 s:", slow)
PY
}
# run 1: a flood; Redis stalls for a moment and the client gives up meanwhile
TOKENS=$work/tokens EVENT_ID=$ev wrk -t2 -c64 -d30s -s tests/load/booking.lua "$base" >"$work/wrk1.txt" 2>&1 &
wrk_pid=$!
sleep 3
kill -STOP "$redis_pid"; sleep 0.5
kill -KILL "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
sleep 0.5; kill -CONT "$redis_pid"
echo "== run 1 (killed while Redis was stopped)"; per_second
sleep 2
: >"$work/access.log"
TOKENS=$work/tokens EVENT_ID=$ev wrk -t2 -c64 -d${SECS:-14}s --latency -s tests/load/booking.lua "$base" >"$work/wrk2.txt" 2>&1
echo "== run 2"; grep -E "Requests/sec|Socket errors|Latency  |requests in" "$work/wrk2.txt" || true
per_second
grep -E "warn|error" "$work/ev.log" | grep -v "redis: \(command\|pub/sub\)" | tail -5 || true
