#!/usr/bin/env bash
# Benchmark (issue 11): a legitimate login while 64 connections guess another
# account's password. Side by side: 25 logins of a real user with no attack
# (from 127.0.0.2), then 25 more (from 127.0.0.3) while wrk guesses from
# 127.0.0.1 for the whole time. Prints the real user's p50/p99 in both, and
# how the guesses were answered (429 once the limits bite, never a slow 401
# for everybody). Goal: p99 under attack < 250 ms; guesses get 429. wrk runs
# at nice 19: an attacker's machine is not the server's.
#   usage: tests/load/login_flood.sh [attack seconds, default 20]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18631
base=http://127.0.0.1:$port
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT
"$bin" version
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG="$work/access.log" EVENTLY_LIMIT_REGISTER_ADDRESS=off \
  setsid "$bin" serve --port $port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf --max-time 2 "$base/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
for who in victim owner; do
  curl -sf "$base/api/v1/auth/register" -H 'Content-Type: application/json' \
    -d "{\"email\":\"$who@example.com\",\"password\":\"the-right-password\",\"name\":\"$who\"}" >/dev/null
done

logins() { # source address -> "p50 p99" of 25 logins of owner@example.com, one every 0.4 s
  python3 - "$port" "$1" <<'PY'
import http.client, json, sys, time
port, src = int(sys.argv[1]), sys.argv[2]
body = json.dumps({"email": "owner@example.com", "password": "the-right-password"})
took, bad = [], []
for _ in range(25):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(src, 0))
    t0 = time.time()
    c.request("POST", "/api/v1/auth/login", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read(); c.close()
    took.append(time.time() - t0)
    if r.status != 200: bad.append(r.status)
    time.sleep(0.4)
took.sort()
print("%.0f %.0f %s" % (1000 * took[len(took) // 2], 1000 * took[int(len(took) * 0.99) - 1 if len(took) > 1 else 0],
                        ",".join(map(str, bad)) or "all-200"))
PY
}

read -r q50 q99 qbad < <(logins 127.0.0.2)
: >"$work/access.log"
# the attacker's CPU is not ours in a real attack: wrk runs at nice 19 so the
# two shared cores go to the server first (without it wrk alone takes a core)
EMAIL=victim@example.com nice -n 19 wrk -t2 -c64 -d"${secs}s" -s tests/load/login_guess.lua "$base" >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 2
read -r a50 a99 abad < <(logins 127.0.0.3)
wait $wrk_pid
guesses=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
answers=$(python3 - "$work/access.log" <<'PY'
import collections, json, sys
c = collections.Counter()
for line in open(sys.argv[1]):
    try: d = json.loads(line)
    except ValueError: continue
    if d.get("route") == "auth.login" and d.get("peer") == "127.0.0.1": c[d["status"]] += 1
print(" ".join("%s:%d" % kv for kv in sorted(c.items())))
PY
)
echo "legitimate login, quiet       : p50 ${q50} ms, p99 ${q99} ms ($qbad)"
echo "legitimate login, 64 guessing : p50 ${a50} ms, p99 ${a99} ms ($abad)  (goal p99 < 250 ms)"
echo "guesses: $guesses req/s; answered (status:count) $answers"
