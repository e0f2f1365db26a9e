#!/usr/bin/env bash
# A/B of builds by the CPU they spend per request at saturation, natively (where
# bench/callgrind.sh counts instructions, this sees cache misses and the kernel too). Each
# binary gets a fresh gateway on a new data directory (CPU 0; `sync = "full"`, audit on), a
# warm-up, then wrk (CPU 1, 64 connections) on ROUTE for DURATION. Give the binaries in the
# order to run them; repeat them to alternate, e.g.
#   bash bench/cpu_ab.sh /tmp/old/cognihook target/release/cognihook /tmp/old/cognihook target/release/cognihook
#
# env: ROUTE (/webhook/cognigy, the seed rules; or /webhook), WARM (3s), DURATION (12s),
#      GW_ENV (VAR=value … set for the gateways), SINK=1 (/webhook with one http sink, as in
#      bench/threads.sh: the receiver on CPU 1), STORE_EXTRA (TOML lines added under
#      [store], e.g. 'idempotency_window = "4m"' for a new key generation every minute)
# Prints per run: req/s, p99, the gateway's CPU (user + system) per request, CPU 0's busy and
# iowait shares during the run, and the gateway's peak RSS. A 60 s DURATION is the issue's
# memory check (peak RSS during a minute at full speed).
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret
GW_PORT=18080
ROUTE=${ROUTE:-/webhook/cognigy}
WARM=${WARM:-3s}
DURATION=${DURATION:-12s}
[ $# -gt 0 ] || { sed -n 2,16p "$0" >&2; exit 2; }
for b in "$@"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
SKIP_BUILD=1 source bench/common.sh
SINK_PORT=18091
if [ -n "${SINK:-}" ]; then
  ROUTE=/webhook
  start_receiver 1 "$SINK_PORT"
fi

route_requests "$ROUTE" 1000 "$work/req.lua"
tick=$(getconf CLK_TCK)

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $ROUTE, wrk 64 connections, $DURATION; sync = full"
printf '%-40s %9s %8s %12s %7s %7s %9s\n' binary req/s "p99 ms" "CPU µs/req" busy iowait "peak MiB"
n=0
for bin in "$@"; do
  n=$((n + 1))
  gateway_toml "$n" "${STORE_EXTRA:-}"
  [ -z "${SINK:-}" ] || sink_route_toml "$SINK_PORT" >> "$work/c-$n.toml"
  start_gateway "$n" "$bin"
  taskset -c 1 wrk -t1 -c64 -d"$WARM" -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- warm >/dev/null
  t0=$(awk '{ print $14 + $15 }' "/proc/$gw/stat")
  c0=$(grep '^cpu0 ' /proc/stat)
  out=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" --latency -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- "run$n")
  t1=$(awk '{ print $14 + $15 }' "/proc/$gw/stat")
  c1=$(grep '^cpu0 ' /proc/stat)
  rss=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$gw/status")
  kill -TERM "$gw"
  wait "$gw" 2>/dev/null || true
  rm -rf "$work/data-$n" "$work/audit-$n.jsonl"
  python3 - "$bin" "$out" "$t0" "$t1" "$c0" "$c1" "$rss" "$tick" <<'PY'
import re, sys
binary, out, t0, t1, c0, c1, rss, tick = sys.argv[1:]
requests = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
n, unit = re.search(r"\s99%\s+([\d.]+)(\w+)", out).groups()
p99 = float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
a = [int(x) for x in c0.split()[1:]]
b = [int(x) for x in c1.split()[1:]]
d = [y - x for x, y in zip(a, b)]
total = sum(d)
# /proc/stat: user nice system idle iowait irq softirq steal ...
busy = 100 * (total - d[3] - d[4]) / total
iowait = 100 * d[4] / total
cpu_us = (float(t1) - float(t0)) / int(tick) * 1e6 / requests
print(f"{binary[-40:]:40} {rps:9.0f} {p99:8.2f} {cpu_us:12.1f} {busy:6.0f}% {iowait:6.0f}% {rss:>9}")
PY
done
