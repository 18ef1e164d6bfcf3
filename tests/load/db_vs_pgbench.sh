#!/usr/bin/env bash
# Benchmark: a route that runs one query, under wrk -c 200, against pgbench
# running the same statement with the same number of Postgres connections
# (workers x pool size), side by side in one run. While wrk runs, /health is
# polled to show the event loop never blocks on the database.
#   usage: tests/load/db_vs_pgbench.sh [seconds, default 10]
# Needs: build/evently (Release best: EVENTLY_BIN=...), wrk, pgbench (postgresql-contrib).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
workers=2
pool=10
conns=200
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18591
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT

EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_SCRIPTS=tests/load/db_app \
  EVENTLY_DB_POOL_MAX=$pool setsid "$bin" serve --port $port --workers $workers >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/db" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/db" >/dev/null || { cat "$work/ev.log"; exit 1; }

# /health latency while the database route is saturated
health() {
  local end=$((SECONDS + secs - 1)) worst=0 n=0 t
  while [ $SECONDS -lt $end ]; do
    t=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/health")
    worst=$(echo "if ($t > $worst) $t else $worst" | bc -l)
    n=$((n + 1))
    sleep 0.2
  done
  echo "$n $worst"
}
health >"$work/health.txt" &
hpid=$!
wrk -t2 -c$conns -d"${secs}s" --latency "http://127.0.0.1:$port/db" >"$work/wrk.txt" 2>&1
wait $hpid
read -r hn hworst <"$work/health.txt"
ev_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
ev_p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
errs=$(grep -E "Socket errors|Non-2xx" "$work/wrk.txt" || echo none)

# pgbench: the same statement, the same number of connections, same server
sock=$(ls -d "$work"/home/run 2>/dev/null || true)
[ -S "$sock/.s.PGSQL.5432" ] || sock=$(dirname "$(ls /tmp/evently-*/.s.PGSQL.5432 | head -1)")
echo 'SELECT 41::int + 1;' >"$work/q.sql"
pgb=/usr/lib/postgresql/15/bin/pgbench
as=()
[ "$(id -u)" -eq 0 ] && as=(runuser -u evently --)
"${as[@]}" "$pgb" -h "$sock" -U evently -n -M prepared -c $((workers * pool)) -j 2 -T "$secs" -f "$work/q.sql" evently >"$work/pgbench.txt" 2>&1 || cat "$work/pgbench.txt"
pg_tps=$(awk '/^tps/ {print $3; exit}' "$work/pgbench.txt")

echo "evently /db   : $ev_rps req/s, p99 $ev_p99, wrk -c $conns, $workers workers x pool $pool; errors: $errs"
echo "pgbench       : $pg_tps tx/s with $((workers * pool)) connections (same statement, prepared)"
echo "ratio evently/pgbench: $(echo "scale=3; $ev_rps / $pg_tps" | bc)"
echo "/health during the run: $hn probes, slowest ${hworst}s"
