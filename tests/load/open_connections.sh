#!/usr/bin/env bash
# Benchmark (issue 12): bookings from 1,000 open connections. Each keeps its
# connection and sends a booking every 0.5 s on average (wrk,
# booking_paced.lua with DELAY_MS=500 POISSON=1: random waits of mean 0.5 s,
# about 2,000 bookings/s offered), for a p99 that is latency, not queueing at
# saturation; then the same 1,000 connections closed-loop
# (each sends its next booking as soon as the last is answered), for the
# record. Every answer must be 201; the database holds the bookings answered
# plus at most one in flight per connection when wrk stopped. Goal: paced p99
# < 50 ms, none refused.
#   usage: tests/load/open_connections.sh [seconds, default 20] [connections, default 1000]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}
conns=${2:-1000}
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18641
base=http://127.0.0.1:$port
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT
ulimit -n "$(ulimit -Hn)"  # wrk holds $conns sockets
"$bin" version
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_DB_POOL_MAX=20 EVENTLY_LIMIT_REGISTER_ADDRESS=off \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
EVENTLY_HOME=$work/home "$bin" user create --admin --email bench@example.com --password benchpassword >/dev/null
admin=$(curl -s "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"bench@example.com","password":"benchpassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
for i in $(seq 1 200); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"u$i@example.com\",\"password\":\"benchpassword\",\"name\":\"U\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
done >"$work/tokens"
event() {
  curl -s "$base/api/v1/events" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d '{"name":"Hot","venue":"Stadium","starts_at":"2031-01-01T20:00:00Z","capacity":10000000,"price_cents":100,"status":"published","max_per_booking":10}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
booked() { # event -> bookings in the database
  EVENTLY_HOME=$work/home "$bin" lua /dev/stdin <<LUA 2>/dev/null
local db = require "evently.db"
io.write(db.value("SELECT count(*) FROM bookings WHERE event_id = \$1", $1))
LUA
}
run() { # name script event [env...] -> prints a result line
  local name=$1 script=$2 ev=$3
  shift 3
  env "$@" TOKENS=$work/tokens EVENT_ID=$ev wrk -t2 -c"$conns" -d"${secs}s" --timeout 10s --latency \
    -s "$script" "$base" >"$work/wrk-$name.txt" 2>&1
  local rps p50 p99 total errs
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$name.txt")
  p50=$(awk '/^p50_ms/ {print $2}' "$work/wrk-$name.txt"); p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk-$name.txt")
  total=$(awk '/requests in/ {print $1}' "$work/wrk-$name.txt")
  errs=$(grep -E "Socket errors|Non-2xx" "$work/wrk-$name.txt" | tr -s ' ' | paste -sd ';' || true)
  sleep 2 # the last answers' batches are committed before their 201s; let wrk's in-flight ones land
  echo "$name: $rps bookings/s, p50 $p50 ms, p99 $p99 ms; $total answered, ${errs:-all 201}; $(booked "$ev") in the database"
}
run "paced, $conns connections, one booking per 0.5 s each on average" tests/load/booking_paced.lua "$(event)" DELAY_MS=500 POISSON=1
run "closed loop, $conns connections" tests/load/booking.lua "$(event)"
echo "goal: paced p99 < 50 ms, all 201"
