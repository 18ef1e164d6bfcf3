#!/usr/bin/env bash
# Benchmark (issue 11): hot-event bookings with a Redis full of foreign keys.
# Two servers side by side, each with its own embedded Postgres and Redis:
# one Redis empty, the other holding 1,000,000 unrelated keys (as any client
# could create them before the cache bounded them). wrk books one hot event
# (64 connections) on each in turn, three rounds (the first to run alternates),
# each run on a fresh event.
# Both databases grow the same way run by run, so their drift cancels; before
# each run both servers' consumers have caught up with the previous runs.
# Prints bookings/s of every run and the ratio sum(full) / sum(empty).
# Goal: >= 0.9 (an invalidation that scanned the keyspace gave 8/s).
#   usage: tests/load/keyspace.sh [seconds per run, default 8] [foreign keys, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}
keys=${2:-1000000}
conns=64
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
trap 'for s in empty full; do kill $(cat $work/$s/evently.pid 2>/dev/null) 2>/dev/null; done; sleep 3; rm -rf $work' EXIT
"$bin" version
declare -A port=([empty]=18611 [full]=18612)

start() { # name
  EVENTLY_HOME=$work/$1 EVENTLY_ACCESS_LOG=off EVENTLY_DB_POOL_MAX=20 EVENTLY_LIMIT_REGISTER_ADDRESS=off \
    setsid "$bin" serve --port "${port[$1]}" --workers 2 >"$work/$1.log" 2>&1 &
}
prepare() { # name: an admin token in $work/$1.admin, 200 buyers' tokens in $work/$1.tokens
  local base=http://127.0.0.1:${port[$1]}
  for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
  EVENTLY_HOME=$work/$1 "$bin" user create --admin --email bench@example.com --password benchpassword >/dev/null 2>&1
  curl -s "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
    -d '{"email":"bench@example.com","password":"benchpassword"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$work/$1.admin"
  for i in $(seq 1 200); do
    curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
      -d "{\"email\":\"u$i@example.com\",\"password\":\"benchpassword\",\"name\":\"U\"}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
  done >"$work/$1.tokens"
}
redis_eval() { # name script
  EVENTLY_HOME=$work/$1 "$bin" lua /dev/stdin "$2" 2>/dev/null <<'LUA'
local redis = require "evently.redis"
io.write(tostring(redis.call("EVAL", arg[1], 0)))
LUA
}
settle() { # both servers' consumers caught up: a run's event backlog must not eat the next run's CPU
  local name lag
  for _ in $(seq 1 120); do
    lag=0
    for name in empty full; do
      lag=$((lag + $(curl -s "http://127.0.0.1:${port[$name]}/metrics" \
        | awk '/^evently_consumer_lag/ {s += $2} END {print s + 0}')))
    done
    [ "$lag" -eq 0 ] && { sleep 2; return; }
    sleep 1
  done
  echo "settle: consumers still $lag behind after 120 s" >&2
}
run() { # name round -> bookings/s
  local base=http://127.0.0.1:${port[$1]} ev rps p99 errs
  settle
  ev=$(curl -s "$base/api/v1/events" -H "Authorization: Bearer $(cat "$work/$1.admin")" -H 'Content-Type: application/json' \
    -d '{"name":"Hot","venue":"Stadium","starts_at":"2031-01-01T20:00:00Z","capacity":10000000,"price_cents":100,"status":"published","max_per_booking":10}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  TOKENS=$work/$1.tokens EVENT_ID=$ev wrk -t2 -c$conns -d"${secs}s" --latency -s tests/load/booking.lua "$base" >"$work/wrk-$1-$2.txt" 2>&1
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$1-$2.txt")
  p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk-$1-$2.txt")
  errs=$(grep -E "Socket errors|Non-2xx" "$work/wrk-$1-$2.txt" || echo "all 201")
  echo "round $2 $1: $rps bookings/s, p99 $p99 ms ($errs); Redis keys: $(redis_eval "$1" 'return redis.call("DBSIZE")')" >&2
  echo "$rps"
}

start empty; start full
prepare empty & pe=$!
prepare full & pf=$!
wait $pe $pf   # not a bare wait: the servers are background jobs too
redis_eval full "for i = 1, $keys do redis.call('SET', 'foreign:' .. i, i) end return $keys" >/dev/null
sum_e=0; sum_f=0
for round in 1 2 3; do
  if [ $((round % 2)) -eq 1 ]; then e=$(run empty $round); f=$(run full $round)
  else f=$(run full $round); e=$(run empty $round); fi   # alternate which goes first
  sum_e=$(echo "$sum_e + $e" | bc); sum_f=$(echo "$sum_f + $f" | bc)
done
echo "ratio full / empty: $(echo "scale=2; $sum_f / $sum_e" | bc)  (goal >= 0.9)"
