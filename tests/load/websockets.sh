#!/usr/bin/env bash
# Benchmark (issue 12): 10,000 idle WebSockets. A Python asyncio client
# (tests/load/ws_idle.py) opens N sockets to /api/v1/ws for 100 users and
# answers the server's pings; the script reads the workers' resident memory
# with no socket and with all N open, then publishes one message to every
# user (ws.publish: one per user, through Redis to every worker) stamped with
# its send time, and reports how long the last socket waited for it.
# Goals: N = 10,000 sockets in <= 200 MiB RSS across the workers; the message
# reaches all of them within 1 s.
#   usage: tests/load/websockets.sh [sockets, default 10000]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-10000}
users=100
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18651
base=http://127.0.0.1:$port
trap 'kill $client 2>/dev/null || true; kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT
client=
ulimit -n "$(ulimit -Hn)"
"$bin" version
# one user may hold n/users sockets here; connect limits off (one address opens them all)
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_LIMIT_REGISTER_ADDRESS=off \
  EVENTLY_LIMIT_WS_CONNECT_USER=off EVENTLY_LIMIT_WS_CONNECT_ADDRESS=off \
  EVENTLY_WS_MAX_PER_USER=$(( n / users + 1 )) \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
for i in $(seq 1 $users); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"w$i@example.com\",\"password\":\"benchpassword\",\"name\":\"W\"}" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["token"], d["user"]["id"])'
done >"$work/users"
cut -d' ' -f1 "$work/users" >"$work/tokens"
ids=$(cut -d' ' -f2 "$work/users" | paste -sd,)

workers_rss() { # KiB summed over the master's children (the workers)
  local master total=0 p
  master=$(cat "$work/home/evently.pid")
  for p in $(pgrep -P "$master"); do
    [ "$(cat /proc/$p/comm)" = evently ] || continue
    total=$(( total + $(awk '/^VmRSS/ {print $2}' /proc/$p/status) ))
  done
  echo $total
}
sleep 2
idle_rss=$(workers_rss)
mkfifo "$work/ctl"
python3 tests/load/ws_idle.py 127.0.0.1 $port "$work/tokens" "$n" "$work/ready" "$work/result" <"$work/ctl" &
client=$!
exec 3>"$work/ctl"
for _ in $(seq 1 300); do [ -s "$work/ready" ] && break; sleep 0.5; done
open=$(cat "$work/ready" 2>/dev/null || echo 0)
sleep 3  # let the workers settle (GC) with every socket open
full_rss=$(workers_rss)

echo "collect 10" >&3
EVENTLY_HOME=$work/home "$bin" lua /dev/stdin "$ids" >/dev/null 2>"$work/publish.log" <<'LUA'
local ws = require "evently.ws"
local time = require "evently.time"
local sent = math.floor(time.now() * 1000)
for id in arg[1]:gmatch("%d+") do
  assert(ws.publish(tonumber(id), { type = "bench.broadcast", payload = { sent_ms = sent } }))
end
LUA
for _ in $(seq 1 60); do [ -s "$work/result" ] && break; sleep 0.5; done
read -r got worst p50 still <"$work/result"
exec 3>&-
per=$(( (full_rss - idle_rss) * 1024 / (open > 0 ? open : 1) ))
echo "sockets open: $open of $n (still open after the message: $still)"
echo "workers' RSS: $(( idle_rss / 1024 )) MiB with none, $(( full_rss / 1024 )) MiB with $open open (~$per bytes per socket)  (goal <= 200 MiB)"
echo "one message to every user: $got of $open sockets got it; last after $worst ms, median $p50 ms  (goal: all within 1000 ms)"
