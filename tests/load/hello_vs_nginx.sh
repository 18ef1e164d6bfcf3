#!/usr/bin/env bash
# Benchmark: Evently's hello route against nginx + lua-nginx-module serving
# the same JSON, side by side in one run (the machine is shared and noisy, so
# only ratios from the same run mean anything). Both get 2 worker processes,
# no access log, the same wrk load; rounds alternate to spread the noise.
# Then one more Evently run with two SIGHUP reloads in the middle, which must
# show zero errors.
#   usage: tests/load/hello_vs_nginx.sh [seconds per round, default 10] [rounds, default 3]
# Needs: build/evently (Release), wrk, nginx, libnginx-mod-http-lua.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
rounds=${2:-3}
conns=${CONNS:-100}
work=$(mktemp -d); chmod 755 "$work"
ev_port=18581
ng_port=18582
trap 'kill $(cat $work/ev.pid 2>/dev/null) 2>/dev/null; [ -f $work/nginx.pid ] && kill $(cat $work/nginx.pid) 2>/dev/null; sleep 2; rm -rf $work' EXIT

cat >"$work/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server {
    listen 127.0.0.1:$ng_port reuseport;
    location = /hello {
      default_type application/json;
      content_by_lua_block { ngx.print('{"message":"hello, world"}') }
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"

EVENTLY_HOME=$work/home EVENTLY_ACCESS_LOG=off EVENTLY_SCRIPTS=examples/hello \
  setsid "${EVENTLY_BIN:-build/evently}" serve --port $ev_port --workers 2 >"$work/ev.log" 2>&1 &
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$ev_port/hello" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$ng_port/hello" >/dev/null 2>&1 && break
  sleep 0.5
done
cp "$work/home/evently.pid" "$work/ev.pid" || { cat "$work/ev.log"; exit 1; }
[ "$(curl -s "http://127.0.0.1:$ev_port/hello")" = "$(curl -s "http://127.0.0.1:$ng_port/hello")" ] || { echo "bodies differ"; exit 1; }

# CPU time (user + system, clock ticks) of a server's workers: the children of
# its master. Throughput shares two cores with wrk; CPU per request does not,
# so it is the steadier figure of the two.
workers_ticks() { # master pid (its children of the same program: not evently's Redis)
  local t=0 p
  for p in $(pgrep -P "$1" -x "$(cat "/proc/$1/comm")"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}
master_of() { # port -> master pid
  if [ "$1" = "$ev_port" ]; then cat "$work/ev.pid"; else cat "$work/nginx.pid"; fi
}

run() { # name port -> "rps p99_ms errors cpu_us_per_request"
  local m t0 t1
  m=$(master_of "$2"); t0=$(workers_ticks "$m")
  wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$2/hello" >"$work/$1.txt" 2>&1
  t1=$(workers_ticks "$m")
  local rps p99 errs reqs cpu
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$1.txt")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub("us","",v); v=v/1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v=v*1000}; print v}' "$work/$1.txt")
  errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10} /Non-2xx/ {print $4}' "$work/$1.txt" | paste -sd+ | bc 2>/dev/null || echo 0)
  reqs=$(awk '/requests in/ {print $1}' "$work/$1.txt")
  cpu=$(echo "scale=2; ($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / ${reqs:-1}" | bc)
  echo "$rps ${p99:-0} ${errs:-0} $cpu"
}

printf "%-6s %-8s %12s %10s %8s %12s\n" round server "req/s" "p99 ms" errors "cpu us/req"
ev_total=0; ng_total=0; ev_p99s=(); ng_p99s=(); ev_cpus=(); ng_cpus=()
for r in $(seq 1 "$rounds"); do
  read -r rps p99 errs cpu < <(run "ev$r" $ev_port)
  printf "%-6s %-8s %12s %10s %8s %12s\n" "$r" evently "$rps" "$p99" "$errs" "$cpu"
  ev_total=$(echo "$ev_total + $rps" | bc); ev_p99s+=("$p99"); ev_cpus+=("$cpu")
  read -r rps p99 errs cpu < <(run "ng$r" $ng_port)
  printf "%-6s %-8s %12s %10s %8s %12s\n" "$r" nginx "$rps" "$p99" "$errs" "$cpu"
  ng_total=$(echo "$ng_total + $rps" | bc); ng_p99s+=("$p99"); ng_cpus+=("$cpu")
done
median() { printf "%s\n" "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "evently mean req/s: $(echo "scale=0; $ev_total / $rounds" | bc)   median p99: $(median "${ev_p99s[@]}") ms"
echo "nginx   mean req/s: $(echo "scale=0; $ng_total / $rounds" | bc)   median p99: $(median "${ng_p99s[@]}") ms"
echo "throughput ratio evently/nginx: $(echo "scale=3; $ev_total / $ng_total" | bc)"
ev_cpu=$(median "${ev_cpus[@]}"); ng_cpu=$(median "${ng_cpus[@]}")
echo "worker CPU per request (median): evently $ev_cpu us, nginx $ng_cpu us; efficiency ratio nginx/evently: $(echo "scale=3; $ng_cpu / $ev_cpu" | bc)"

# reloads under load: two SIGHUPs during one run, zero errors expected
wrk -t2 -c"$conns" -d"${secs}s" "http://127.0.0.1:$ev_port/hello" >"$work/reload.txt" 2>&1 &
wrk_pid=$!
sleep $(echo "$secs / 3" | bc -l); kill -HUP "$(cat "$work/ev.pid")"
sleep $(echo "$secs / 3" | bc -l); kill -HUP "$(cat "$work/ev.pid")"
wait $wrk_pid
reqs=$(awk '/requests in/ {print $1}' "$work/reload.txt")
errs=$(grep -E "Socket errors|Non-2xx" "$work/reload.txt" || true)
echo "reload run: $reqs requests, 2 SIGHUPs, errors: ${errs:-none}"
