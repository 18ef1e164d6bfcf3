#!/usr/bin/env bash
# Benchmark: the outbox -> Kafka relay and end-to-end notification latency,
# with a real broker (tests/kafka), side by side with Kafka's own producer
# benchmark in the same run.
#  1. Booking load on one hot event for N seconds with the relay and the
#     notification consumers running, after a warm-up that creates the topics:
#     paced (80 connections, random waits of mean 36 ms: ~2,000 bookings/s),
#     then at saturation (32 connections). For each: bookings/s, and the
#     end-to-end latency of each booking.confirmed from its outbox row
#     (created_at) to the notify-websocket consumer having handled it, i.e.
#     pushed to the user's sockets (stream_processed.processed_at): p50/p99,
#     both clocks Postgres's. Goal: p99 < 250 ms at 2,000 bookings/s.
#  2. Relay throughput: 50,000 outbox rows inserted at once; events/s until
#     the relay has published (and marked) them all. Each row goes to its topic
#     and analytics-events, so Kafka receives twice as many messages.
#  3. Baseline: kafka-producer-perf-test (ProducerPerformance) sending as many
#     records of the same size, acks=all, idempotent, to the same broker, with
#     batch.size=1000000 (librdkafka's default, so the relay's: the Java
#     client's 16 KB default would make the baseline, not the relay, slow).
#   usage: tests/load/stream_kafka.sh [seconds, default 10]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18701; kport=18792; kctl=18793
base=http://127.0.0.1:$port
brokers=127.0.0.1:$kport
[ -d tests/kafka/target/lib ] || mvn -q -B -f tests/kafka/pom.xml dependency:copy-dependencies
cleanup() {
  kill "$(cat "$work/home/evently.pid" 2>/dev/null)" 2>/dev/null || true
  [ -n "${kpid:-}" ] && kill -- -"$kpid" 2>/dev/null || true
  sleep 3; rm -rf "$work"
}
trap cleanup EXIT

setsid tests/kafka/broker.sh "$work/kafka" $kport $kctl >"$work/kafka.log" 2>&1 &
kpid=$!
for _ in $(seq 1 120); do (exec 3<>/dev/tcp/127.0.0.1/$kport) 2>/dev/null && break; sleep 0.5; done
# the topics exist before the consumers subscribe, as in a deployment: a topic
# auto-created mid-run by its first message rebalances every group subscribed
# to it (a second or more with nothing consumed), which is not what we measure
for t in booking-confirmed booking-cancelled waitlist-notification event-cancelled analytics-events; do
  java -Xmx256m -cp "tests/kafka/target/lib/*" -Dlog4j.configuration=file:/dev/null \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" --create --if-not-exists \
    --topic "$t" --partitions 4 --replication-factor 1 >>"$work/topics.log" 2>&1
done

# the bench registers its buyers from one address: no register-address limit
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_DB_POOL_MAX=20 EVENTLY_LIMIT_REGISTER_ADDRESS=off EVENTLY_KAFKA_BROKERS=$brokers \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
sql() { EVENTLY_HOME=$work/home "$bin" lua /dev/stdin 2>/dev/null <<LUA
local db = require "evently.db"
local v = assert(db.value([[$1]]))
io.write(tostring(v))
LUA
}
EVENTLY_HOME=$work/home "$bin" user create --admin --email bench@example.com --password benchpassword >/dev/null
admin=$(curl -s "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"bench@example.com","password":"benchpassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
for i in $(seq 1 100); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"u$i@example.com\",\"password\":\"benchpassword\",\"name\":\"U\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
done >"$work/tokens"
hot=$(curl -s "$base/api/v1/events" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"name":"Hot","venue":"Stadium","starts_at":"2031-01-01T20:00:00Z","capacity":10000000,"price_cents":100,"status":"published","max_per_booking":10}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

new_event() {
  curl -s "$base/api/v1/events" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d '{"name":"Hot","venue":"Stadium","starts_at":"2031-01-01T20:00:00Z","capacity":10000000,"price_cents":100,"status":"published","max_per_booking":10}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
# latencies of one event's booking.confirmed messages, once all are handled
latencies() { # event -> sets relay_lat, lat
  local hot=$1
  for _ in $(seq 1 120); do
  left=$(sql "SELECT count(*) FROM outbox o WHERE o.aggregate_id = $hot AND NOT EXISTS
    (SELECT 1 FROM stream_processed p WHERE p.consumer_group = 'notify-websocket' AND p.message_id = o.id)")
  [ "$left" = 0 ] && break; sleep 1
done
relay_lat=$(sql "SELECT format('p50 %s ms, p99 %s ms',
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1))
  FROM (SELECT extract(epoch FROM published_at - created_at) * 1000 AS d FROM outbox
        WHERE aggregate_id = $hot AND published_at IS NOT NULL) t")
lat=$(sql "SELECT format('p50 %s ms, p99 %s ms, max %s ms',
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1), round(max(d)::numeric, 1))
  FROM (SELECT extract(epoch FROM p.processed_at - o.created_at) * 1000 AS d FROM outbox o
        JOIN stream_processed p ON p.consumer_group = 'notify-websocket' AND p.message_id = o.id
        WHERE o.aggregate_id = $hot) t")
}

# warm-up: the first messages create the topics and the groups take their
# partitions; latencies measured before that would be the broker's start-up
warm=$(new_event)
TOKENS=$work/tokens EVENT_ID=$warm DELAY_MS=100 wrk -t1 -c4 -d3s -s tests/load/booking_paced.lua "$base" >/dev/null 2>&1
latencies "$warm"
sleep 3
# 1a. bookings at a pace the system carries: 64 connections, each waiting a
# random time of mean 36 ms after each answer (80 x 1000 / 36: about 2,200
# bookings/s offered; less the answers' own time, about 2,000)
paced=$(new_event)
TOKENS=$work/tokens EVENT_ID=$paced DELAY_MS=36 POISSON=1 wrk -t2 -c80 -d"${secs}s" --latency -s tests/load/booking_paced.lua "$base" >"$work/wrk-paced.txt" 2>&1
paced_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-paced.txt")
latencies "$paced"
paced_lat=$lat; paced_relay=$relay_lat
# 1b. bookings at saturation with the stream running (for the record)
TOKENS=$work/tokens EVENT_ID=$hot wrk -t2 -c32 -d"${secs}s" --latency -s tests/load/booking.lua "$base" >"$work/wrk.txt" 2>&1
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
booked=$(sql "SELECT count(*) FROM bookings WHERE event_id = $hot")
latencies "$hot"
sat_lat=$lat; sat_relay=$relay_lat

# 2. relay throughput on a backlog
n=50000
before=$(sql "SELECT count(*) FROM outbox WHERE published_at IS NULL")
size=$(sql "SELECT length(json_build_object('id', 1000000, 'type', 'booking.confirmed', 'key', $hot,
  'payload', jsonb_build_object('booking_id', 1000000, 'event_id', $hot, 'user_id', 42, 'quantity', 1, 'available', 9999000),
  'created_at', now())::text)")
t0=$(date +%s.%N)
sql "WITH i AS (INSERT INTO outbox (event_type, aggregate_id, payload)
  SELECT 'booking.confirmed', $hot, jsonb_build_object('booking_id', g, 'event_id', $hot, 'user_id', 42, 'quantity', 1, 'available', 9999000)
  FROM generate_series(1, $n) g RETURNING 1) SELECT count(*) FROM i" >/dev/null
for _ in $(seq 1 600); do
  left=$(sql "SELECT count(*) FROM outbox WHERE published_at IS NULL")
  [ "$left" -le "$before" ] && break; sleep 0.2
done
t1=$(date +%s.%N)
relay_rate=$(echo "scale=0; $n / ($t1 - $t0)" | bc)

# 3. Kafka's own producer benchmark, same broker, as many records (x2: two topics)
java -Xmx512m -cp "tests/kafka/target/lib/*" -Dlog4j.configuration=file:/dev/null \
  org.apache.kafka.tools.ProducerPerformance --topic perf-baseline --num-records $((2 * n)) \
  --record-size "$size" --throughput -1 \
  --producer-props bootstrap.servers=$brokers acks=all enable.idempotence=true linger.ms=2 batch.size=1000000 \
  >"$work/perf.txt" 2>&1 || true
perf=$(tail -1 "$work/perf.txt")
perf_rate=$(sed -nE 's/^[0-9]+ records sent, ([0-9.]+) records\/sec.*/\1/p' "$work/perf.txt" | tail -1)

echo "bookings paced (80 connections, random waits of mean 36 ms): $paced_rps req/s"
echo "  end-to-end booking.confirmed -> notify-websocket handled: $paced_lat  (goal p99 < 250 ms at 2,000/s)"
echo "  of which outbox row -> published (relay, after Kafka's delivery report): $paced_relay"
echo "bookings at saturation with the stream running: $rps req/s ($booked booked)"
echo "  end-to-end booking.confirmed -> notify-websocket handled: $sat_lat"
echo "  of which outbox row -> published: $sat_relay"
echo "relay: $n outbox rows published and marked at $relay_rate rows/s ($((2 * relay_rate)) Kafka messages/s, ${size}-byte values)"
echo "kafka-producer-perf-test, $((2 * n)) records of $size bytes: $perf"
echo "ratio relay messages/s vs producer-perf records/s: $(echo "scale=2; 2 * $relay_rate / ${perf_rate:-1}" | bc)"
