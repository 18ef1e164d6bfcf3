#!/usr/bin/env bash
# Benchmark: one hot event, many users booking one seat each (wrk, 64
# connections), against the minimal single-statement booking on the same
# Postgres at the same concurrency (issue 12): pgbench -M prepared -c 64 -j 2,
# one transaction per booking, on a table of one row (id, available) and a
# bookings table with a bigserial key and no trigger, in a database of its
# own, synchronous_commit on. That is what Postgres can do for a booking that
# takes a row lock, with nothing of ours slowing it: run right before and
# right after the evently run (evently idle, its consumers caught up), the
# ratio taken against the median. Then the same load on a sold-out event:
# sold-out answers/s (served by the per-worker gate), and a run where every
# booking carries its own Idempotency-Key. Side by side in one run.
#   usage: tests/load/hot_event.sh [seconds, default 10]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=64
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18601
base=http://127.0.0.1:$port
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT

# the bench registers its buyers from one address: no register-address limit
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_DB_POOL_MAX=20 EVENTLY_LIMIT_REGISTER_ADDRESS=off \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
EVENTLY_HOME=$work/home "$bin" user create --admin --email bench@example.com --password benchpassword >/dev/null
admin=$(curl -s "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"bench@example.com","password":"benchpassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
event() { # capacity -> id
  curl -s "$base/api/v1/events" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d "{\"name\":\"Hot\",\"venue\":\"Stadium\",\"starts_at\":\"2031-01-01T20:00:00Z\",\"capacity\":$1,\"price_cents\":100,\"status\":\"published\",\"max_per_booking\":10}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
settle() { # the consumers caught up: a run's event backlog must not eat the next run's CPU
  local lag
  for _ in $(seq 1 120); do
    lag=$(curl -s "$base/metrics" | awk '/^evently_consumer_lag/ {s += $2} END {print s + 0}')
    [ "$lag" -eq 0 ] && { sleep 2; return; }
    sleep 1
  done
  echo "settle: consumers still $lag behind after 120 s" >&2
}

# The baseline: the minimal booking, in a database of its own on the same server.
sock=$work/home/run
[ -S "$sock/.s.PGSQL.5432" ] || sock=$(dirname "$(ls /tmp/evently-*/.s.PGSQL.5432 | head -1)")
as=(); [ "$(id -u)" -eq 0 ] && as=(runuser -u evently --)
pgbin=/usr/lib/postgresql/15/bin
"${as[@]}" $pgbin/psql -q -h "$sock" -U evently -d postgres -c "CREATE DATABASE bench_min" >/dev/null
"${as[@]}" $pgbin/psql -q -h "$sock" -U evently -d bench_min >/dev/null <<'SQL'
CREATE TABLE inv (id int PRIMARY KEY, available int NOT NULL);
CREATE TABLE bookings_min (id bigserial PRIMARY KEY, inv_id int NOT NULL, user_id int NOT NULL, qty int NOT NULL);
SQL
cat >"$work/min.sql" <<'SQL'
\set uid random(2, 201)
BEGIN;
UPDATE inv SET available = available - 1 WHERE id = 1 AND available >= 1;
INSERT INTO bookings_min(inv_id, user_id, qty) VALUES (1, :uid, 1);
COMMIT;
SQL
baseline() { # -> tx/s of the minimal booking, 64 clients, on a fresh row and table
  "${as[@]}" $pgbin/psql -q -h "$sock" -U evently -d bench_min >/dev/null \
    -c "TRUNCATE bookings_min" -c "DELETE FROM inv" -c "INSERT INTO inv VALUES (1, 100000000)" \
    -c "VACUUM ANALYZE inv" -c "CHECKPOINT"
  [ "$("${as[@]}" $pgbin/psql -qAt -h "$sock" -U evently -d bench_min -c "SHOW synchronous_commit")" = on ] \
    || { echo "synchronous_commit is not on" >&2; exit 1; }
  "${as[@]}" $pgbin/pgbench -h "$sock" -U evently -n -M prepared -c $conns -j 2 \
    -T "$secs" -f "$work/min.sql" bench_min >"$work/pgbench-$1.txt" 2>&1 || cat "$work/pgbench-$1.txt" >&2
  awk '/^tps/ {print $3; exit}' "$work/pgbench-$1.txt"
}

for i in $(seq 1 200); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"u$i@example.com\",\"password\":\"benchpassword\",\"name\":\"U\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
done >"$work/tokens"

"$bin" version
settle
tps_before=$(baseline before)
hot=$(event 10000000)
TOKENS=$work/tokens EVENT_ID=$hot wrk -t2 -c$conns -d"${secs}s" --latency -s tests/load/booking.lua "$base" >"$work/wrk.txt" 2>&1
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
p50=$(awk '/^p50_ms/ {print $2}' "$work/wrk.txt"); p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk.txt")
errs=$(grep -E "Socket errors|Non-2xx" "$work/wrk.txt" || echo none)

sold=$(EVENTLY_HOME=$work/home "$bin" lua /dev/stdin <<LUA 2>/dev/null
local db = require "evently.db"
io.write(db.value("SELECT count(*) FROM bookings WHERE event_id = \$1", $hot))
LUA
)
metrics=$(curl -s "$base/metrics")
batches=$(awk '/^evently_booking_batches_total/ {print $2}' <<<"$metrics")
batched=$(awk '/^evently_booking_batch_requests_total/ {print $2}' <<<"$metrics")

settle
tps_after=$(baseline after)
tps=$(echo "scale=1; ($tps_before + $tps_after) / 2" | bc)  # the median of two

# the same, every booking with its own Idempotency-Key (stored by the batch statement)
keyed_ev=$(event 10000000)
IDEMPOTENT=1 TOKENS=$work/tokens EVENT_ID=$keyed_ev wrk -t2 -c$conns -d"${secs}s" --latency -s tests/load/booking.lua "$base" >"$work/wrk-keyed.txt" 2>&1
keyed_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-keyed.txt")
keyed_p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk-keyed.txt")
keyed_errs=$(grep -E "Socket errors|Non-2xx" "$work/wrk-keyed.txt" || echo none)

# sold out: the same load on an event with no seats
gone=$(event 1)
curl -s "$base/api/v1/bookings" -H "Authorization: Bearer $(head -1 "$work/tokens")" -H 'Content-Type: application/json' \
  -d "{\"event_id\":$gone,\"quantity\":1}" >/dev/null
# one fixed request (tokens are answered from memory after the first use anyway):
# wrk then spends no Lua per request and takes less of the 2 shared cores
TOKENS=$work/tokens EVENT_ID=$gone wrk -t2 -c$conns -d"${secs}s" --latency -s tests/load/booking_static.lua "$base" >"$work/wrk-sold.txt" 2>&1
sold_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-sold.txt")
sold_p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk-sold.txt")

echo "hot event bookings : $rps req/s (all 201: $errs), p50 ${p50} ms, p99 ${p99} ms; $sold bookings in the database"
echo "  batches: $batches statements carried $batched bookings"
echo "hot event, each with an Idempotency-Key: $keyed_rps req/s (all 201: $keyed_errs), p99 ${keyed_p99} ms"
echo "baseline, minimal booking (pgbench -M prepared -c $conns -j 2): $tps_before tx/s before, $tps_after after; median $tps"
echo "ratio evently/baseline: $(echo "scale=2; $rps / $tps" | bc)  (goal >= 3.0)"
echo "sold-out answers   : $sold_rps req/s, p99 ${sold_p99} ms"
