#!/usr/bin/env bash
# Benchmark (issue 11): hot-event bookings with a Redis full of foreign keys.
# One server; wrk books one hot event (64 connections) in four runs, each on a
# fresh event: empty Redis, twice with 1,000,000 unrelated keys in it (as any
# client could create them before the cache bounded them), empty again. The
# order E F F E cancels a steady drift (the bookings table grows run by run).
# Prints bookings/s of each and the ratio sum(full) / sum(empty).
# Goal: >= 0.9 (an invalidation that scanned the keyspace gave 8/s).
#   usage: tests/load/keyspace.sh [seconds per run, default 10] [foreign keys, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
keys=${2:-1000000}
conns=64
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18611
base=http://127.0.0.1:$port
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT
"$bin" version

EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_DB_POOL_MAX=20 EVENTLY_LIMIT_REGISTER_ADDRESS=off \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
EVENTLY_HOME=$work/home "$bin" user create --admin --email bench@example.com --password benchpassword >/dev/null
admin=$(curl -s "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"bench@example.com","password":"benchpassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
event() {
  curl -s "$base/api/v1/events" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d '{"name":"Hot","venue":"Stadium","starts_at":"2031-01-01T20:00:00Z","capacity":10000000,"price_cents":100,"status":"published","max_per_booking":10}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
for i in $(seq 1 200); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"u$i@example.com\",\"password\":\"benchpassword\",\"name\":\"U\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
done >"$work/tokens"

redis_eval() { # script -> what it returns
  EVENTLY_HOME=$work/home "$bin" lua /dev/stdin "$1" <<'LUA'
local redis = require "evently.redis"
io.write(tostring(redis.call("EVAL", arg[1], 0)))
LUA
}
run() { # label -> bookings/s
  local ev; ev=$(event)
  TOKENS=$work/tokens EVENT_ID=$ev wrk -t2 -c$conns -d"${secs}s" --latency -s tests/load/booking.lua "$base" >"$work/wrk-$1.txt" 2>&1
  local rps p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$1.txt")
  p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk-$1.txt")
  errs=$(grep -E "Socket errors|Non-2xx" "$work/wrk-$1.txt" || echo "all 201")
  echo "$1: $rps bookings/s, p99 $p99 ms ($errs); Redis keys: $(redis_eval 'return redis.call("DBSIZE")')" >&2
  echo "$rps"
}

empty1=$(run empty)
redis_eval "for i = 1, $keys do redis.call('SET', 'foreign:' .. i, i) end return $keys" >/dev/null
full1=$(run "full($keys foreign keys)")
full2=$(run "full-again")
redis_eval "for i = 1, $keys do redis.call('UNLINK', 'foreign:' .. i) end return 0" >/dev/null
empty2=$(run empty-again)
echo "ratio full / empty: $(echo "scale=2; ($full1 + $full2) / ($empty1 + $empty2)" | bc)  (goal >= 0.9)"
