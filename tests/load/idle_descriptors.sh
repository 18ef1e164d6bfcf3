#!/usr/bin/env bash
# Benchmark (issue 11): descriptors exhausted by idle clients. The server runs
# with `ulimit -n 256` (2 workers); 366 TCP connections that send nothing are
# opened and held (re-opened as the server closes them, as an attacker would)
# for the measuring time, side by side with the same time without them.
# Prints /health's worst latency, the workers' CPU and the log lines written
# per minute in both. Goals (with the idle clients): /health within 1 s,
# workers under 10 % CPU, fewer than 1,000 log lines a minute.
#   usage: tests/load/idle_descriptors.sh [seconds per phase, default 60]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
bin=${EVENTLY_BIN:-build/evently}
work=$(mktemp -d); chmod 755 "$work"
port=18621
trap 'kill $(cat $work/home/evently.pid 2>/dev/null) 2>/dev/null; sleep 3; rm -rf $work' EXIT
"$bin" version
(ulimit -n 256; EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off setsid "$bin" serve --port $port --workers 2 \
  >"$work/ev.log" 2>&1 &)
for _ in $(seq 1 120); do curl -sf --max-time 2 "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break; sleep 0.5; done
master=$(cat "$work/home/evently.pid")

python3 - "$port" "$master" "$work/ev.log" "$secs" <<'PY'
import os, socket, subprocess, sys, threading, time
port, master, log, secs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(master), "evently"],
                                          capture_output=True, text=True).stdout.split()]
tck = os.sysconf("SC_CLK_TCK")

def cpu():
    total = 0
    for pid in workers:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tck

def lines():
    with open(log, "rb") as f:
        return sum(1 for _ in f)

def health():
    t0 = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ok = s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()
    except OSError:
        ok = False
    return time.time() - t0, ok

stop = threading.Event()
def attacker():
    socks = []
    while not stop.is_set():
        socks = [s for s in socks if s.fileno() >= 0]
        while len(socks) < 366 and not stop.is_set():
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        for s in list(socks):  # the server closed some: open others in their place
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    s.close(); socks.remove(s)
            except BlockingIOError:
                pass
            except OSError:
                s.close(); socks.remove(s)
        time.sleep(0.5)
    for s in socks:
        s.close()

def phase(label, with_attack):
    t = threading.Thread(target=attacker) if with_attack else None
    if t:
        stop.clear(); t.start(); time.sleep(2)
    c0, l0, t0, worst, failed = cpu(), lines(), time.time(), 0.0, 0
    while time.time() - t0 < secs:
        took, ok = health()
        worst = max(worst, took); failed += not ok
        time.sleep(1)
    el = time.time() - t0
    print("%-24s /health worst %.3f s (%d not 200), workers CPU %.1f %%, log %.0f lines/min"
          % (label, worst, failed, 100 * (cpu() - c0) / el, (lines() - l0) * 60 / el))
    if t:
        stop.set(); t.join()

phase("quiet:", False)
phase("366 idle clients:", True)
PY
