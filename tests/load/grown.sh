#!/usr/bin/env bash
# Benchmark (issue 14): the same figures on an empty database and on one that
# has grown like a ticketing system's after a while: 2,000,000 outbox rows,
# 1,000,000 bookings, 1,000,000 notifications, 200,000 tokens and 200,000
# idempotency keys (all within their retention windows, so nothing is pruned
# meanwhile). Measured side by side in one run, each as a ratio grown/empty:
#   hot-event bookings/s (wrk -c64, one seat each, 200 users),
#   browsing: GET /events (list) and GET /events/{id},
#   a user's own bookings: GET /bookings (each of the 200 users then holds
#   ~5,000 of the million),
#   /metrics: median of 20 scrapes, in ms (goal: under 50).
# Goal: each ratio >= 0.9.
#   usage: tests/load/grown.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=64
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18611
base=http://127.0.0.1:$port
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null || true; sleep 3; rm -rf $work' EXIT

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
settle() { # the consumers caught up
  local lag
  for _ in $(seq 1 120); do
    lag=$(curl -s "$base/metrics" | awk '/^evently_consumer_lag/ {s += $2} END {print s + 0}')
    [ "$lag" -eq 0 ] && { sleep 2; return; }
    sleep 1
  done
  echo "settle: consumers still $lag behind after 120 s" >&2
}
for i in $(seq 1 200); do
  curl -s "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"u$i@example.com\",\"password\":\"benchpassword\",\"name\":\"U\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
done >"$work/tokens"

wrk_rps() { # name wrk-args... -> "rps p99"
  local name=$1; shift
  wrk -t2 -c$conns -d"${secs}s" --latency "$@" >"$work/$name.txt" 2>&1
  echo "$(awk '/Requests\/sec/ {print $2}' "$work/$name.txt") $(awk '/^p99_ms/ {print $2}' "$work/$name.txt")"
  grep -E "Non-2xx|Socket errors" "$work/$name.txt" >&2 || true
}
scrape_ms() { # median of 20 /metrics scrapes
  for _ in $(seq 1 20); do curl -s -o /dev/null -w '%{time_total}\n' "$base/metrics"; done \
    | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)] * 1000}'
}
measure() { # label -> prints and records figures in $work/<label>.fig
  settle
  local hot list one mine
  hot=$(event 10000000)
  read -r b_rps b_p99 < <(TOKENS=$work/tokens EVENT_ID=$hot wrk_rps "book-$1" -s tests/load/booking.lua "$base")
  settle
  read -r l_rps l_p99 < <(PATH_TO="/api/v1/events?page=1&size=20" wrk_rps "list-$1" -s tests/load/get.lua "$base")
  read -r o_rps o_p99 < <(PATH_TO="/api/v1/events/$hot" wrk_rps "one-$1" -s tests/load/get.lua "$base")
  read -r m_rps m_p99 < <(TOKENS=$work/tokens PATH_TO="/api/v1/bookings?page=1&size=20" \
    wrk_rps "mine-$1" -s tests/load/get.lua "$base")
  local scrape; scrape=$(scrape_ms)
  printf "%-6s bookings %9s/s (p99 %s ms)  list %9s/s  event %9s/s  own bookings %9s/s (p99 %s ms)  /metrics %s ms\n" \
    "$1" "$b_rps" "$b_p99" "$l_rps" "$o_rps" "$m_rps" "$m_p99" "$scrape"
  echo "$b_rps $l_rps $o_rps $m_rps $scrape" >"$work/$1.fig"
}

# Page 1 of GET /events holds the same 20 events in both runs (the soonest;
# the history added later starts after them): a fuller page must not pass
# for a slower database.
sock=$work/home/run
as=(); [ "$(id -u)" -eq 0 ] && as=(runuser -u evently --)
"${as[@]}" /usr/lib/postgresql/15/bin/psql -q -h "$sock" -U evently -d evently -c "
  INSERT INTO events (name, venue, starts_at, capacity, available, price_cents, status)
  SELECT 'Soon ' || g, 'Club', now() + interval '1 day' + g * interval '1 minute', 100, 100, 100, 'published'
  FROM generate_series(1, 20) g" >/dev/null

"$bin" version
measure empty

# Grow the database: history that every table keeps within its retention
# window. Outbox rows get txid 1: below every consumer's position, as consumed
# history is.
started=$(date +%s)
"${as[@]}" /usr/lib/postgresql/15/bin/psql -q -h "$sock" -U evently -d evently >/dev/null <<'SQL'
INSERT INTO events (name, venue, starts_at, capacity, available, price_cents, status)
  SELECT 'Past ' || g, 'Hall', now() + interval '30 days', 2000, 1000, 100, 'published' FROM generate_series(1, 1000) g;
INSERT INTO outbox (event_type, aggregate_id, payload, created_at, txid)
  SELECT 'booking.confirmed', 1 + g % 1000, jsonb_build_object('booking_id', g, 'n', g),
         now() - (g % 500000) * interval '1 second', 1
  FROM generate_series(1, 2000000) g;
CREATE TEMP TABLE ids AS SELECT
  (SELECT array_agg(id ORDER BY id) FROM events WHERE name LIKE 'Past %') AS ev,
  (SELECT array_agg(id ORDER BY id) FROM users WHERE email LIKE 'u%@example.com') AS us;
INSERT INTO bookings (event_id, user_id, quantity, status, total_cents, currency)
  SELECT ids.ev[1 + g % 1000], ids.us[1 + g % 200], 1, 'confirmed', 100, 'EUR'
  FROM generate_series(1, 1000000) g, ids;
INSERT INTO notifications (user_id, type, payload)
  SELECT ids.us[1 + g % 200], 'booking.confirmed', jsonb_build_object('event_id', g % 1000)
  FROM generate_series(1, 1000000) g, ids;
INSERT INTO auth_tokens (token_hash, user_id, expires_at)
  SELECT md5('t' || g), ids.us[1 + g % 200], now() + interval '1 day' FROM generate_series(1, 200000) g, ids;
INSERT INTO idempotency_keys (user_id, key, request_hash, status, created_at)
  SELECT ids.us[1 + g % 200], 'k' || g, 'h', 201, now() - interval '1 hour' FROM generate_series(1, 200000) g, ids;
VACUUM ANALYZE;
SQL
echo "grew the database in $(( $(date +%s) - started )) s"
measure grown

read -r e_b e_l e_o e_m e_s <"$work/empty.fig"
read -r g_b g_l g_o g_m g_s <"$work/grown.fig"
ratio() { echo "scale=2; $2 / $1" | bc; }
echo "ratios grown/empty (goal >= 0.9): bookings $(ratio "$e_b" "$g_b"), list $(ratio "$e_l" "$g_l"), event $(ratio "$e_o" "$g_o"), own bookings $(ratio "$e_m" "$g_m")"
echo "/metrics: $e_s ms empty, $g_s ms grown (goal < 50 ms)"
