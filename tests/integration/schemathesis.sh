#!/usr/bin/env bash
# Contract test: schemathesis (PyPI) generates requests from /openapi.json and
# checks every answer: no 5xx, status codes, content types and bodies as
# documented. Runs as an admin so every operation is reached (logout is
# excluded: it would revoke the token mid-run; /ws too: it speaks WebSocket,
# which schemathesis cannot, and tests/integration/test_websocket.py covers it).
#   usage: tests/integration/schemathesis.sh [max examples per operation, default 40]
# Prints "schemathesis: 1 passed, 0 failed" (or 0 passed, 1 failed).
set -uo pipefail
cd "$(dirname "$0")/../.."
examples=${1:-40}
bin=${EVENTLY_BIN:-build/evently}
venv=build/venv
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q schemathesis==4.32.5 || {
    echo "schemathesis: cannot install from PyPI"; echo "schemathesis: 0 passed, 1 failed"; exit 1; }
fi
work=$(mktemp -d); chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT
EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off setsid "$bin" serve --port "$port" --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
EVENTLY_HOME=$work/home "$bin" user create --admin --email st@example.com --password schemapassword >/dev/null
token=$(curl -s "http://127.0.0.1:$port/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"st@example.com","password":"schemapassword"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --exclude-path /api/v1/auth/logout --exclude-path /api/v1/ws -H "Authorization: Bearer $token" --max-examples "$examples" \
  --seed 20261125 >"$work/st.out" 2>&1
rc=$?
tail -20 "$work/st.out"
if [ $rc -ne 0 ]; then
  grep -B2 -A20 -E "^_{5,}" "$work/st.out" | head -80
  grep -E "error" "$work/ev.log" | grep -v '^{' | head -20
  echo "schemathesis: 0 passed, 1 failed"
  exit 1
fi
echo "schemathesis: 1 passed, 0 failed"
