#!/usr/bin/env bash
# Benchmark: one hot event, many users booking one seat each (wrk, 64
# connections), against pgbench running the single-statement booking SQL
# (conditional UPDATE of the event row + INSERT of the booking + outbox row) at
# the same concurrency on the same database: the Postgres limit for one
# statement per booking. Then the same load on a sold-out event: sold-out
# answers/s (served by the per-worker gate), and a run where every booking
# carries its own Idempotency-Key. Side by side in one run.
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
for i in $(seq 1 200); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"u$i@example.com\",\"password\":\"benchpassword\",\"name\":\"U\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
done >"$work/tokens"

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

# the same, every booking with its own Idempotency-Key (stored by the batch statement)
keyed_ev=$(event 10000000)
IDEMPOTENT=1 TOKENS=$work/tokens EVENT_ID=$keyed_ev wrk -t2 -c$conns -d"${secs}s" --latency -s tests/load/booking.lua "$base" >"$work/wrk-keyed.txt" 2>&1
keyed_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-keyed.txt")
keyed_p99=$(awk '/^p99_ms/ {print $2}' "$work/wrk-keyed.txt")
keyed_errs=$(grep -E "Socket errors|Non-2xx" "$work/wrk-keyed.txt" || echo none)

# pgbench: the single-statement booking at the same concurrency, same database
sock=$work/home/run
[ -S "$sock/.s.PGSQL.5432" ] || sock=$(dirname "$(ls /tmp/evently-*/.s.PGSQL.5432 | head -1)")
pg_event=$(event 10000000)
cat >"$work/take.sql" <<SQL
\set uid random(2, 201)
WITH ev AS (UPDATE events SET available = available - 1, updated_at = now()
  WHERE id = $pg_event AND available >= 1 AND status = 'published' RETURNING id, price_cents, currency, available),
b AS (INSERT INTO bookings (event_id, user_id, quantity, status, total_cents, currency)
  SELECT ev.id, :uid, 1, 'confirmed', ev.price_cents, ev.currency FROM ev RETURNING id, event_id, user_id),
o AS (INSERT INTO outbox (event_type, aggregate_id, payload)
  SELECT 'booking.confirmed', b.event_id, jsonb_build_object('booking_id', b.id) FROM b)
SELECT * FROM b;
SQL
as=(); [ "$(id -u)" -eq 0 ] && as=(runuser -u evently --)
"${as[@]}" /usr/lib/postgresql/15/bin/pgbench -h "$sock" -U evently -n -M prepared -c $conns -j 2 \
  -T "$secs" -f "$work/take.sql" evently >"$work/pgbench.txt" 2>&1 || cat "$work/pgbench.txt"
tps=$(awk '/^tps/ {print $3; exit}' "$work/pgbench.txt")

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
echo "pgbench single-statement booking, $conns clients: $tps tx/s"
echo "ratio evently/pgbench: $(echo "scale=2; $rps / $tps" | bc)"
echo "sold-out answers   : $sold_rps req/s, p99 ${sold_p99} ms"
