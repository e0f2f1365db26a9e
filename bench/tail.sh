#!/usr/bin/env bash
# Where the slow requests' time goes at saturation: a scheduler trace of CPU 0, read by
# bench/tail.py. Each target (the durable reference, `ref`, or a gateway binary) runs fresh
# on CPU 0 (`sync = "full"`, audit on), is warmed up, then loaded with wrk (CPU 1, 64
# connections, 8 s); 3 s in, `perf record` (itself on CPU 1) records CPU 0's context switches
# and wake-ups, the log writer's `fdatasync`s and the async workers' `recvfrom` and `writev`
# for TRACE seconds. Prints wrk's figures under the trace, then tail.py's report: the core's
# time by thread (and idle), each request's read wait and service time, the CPU each thread had
# during the median, slow and slowest requests' lives, the commit cycles by length, and how
# long the writer and the workers waited for the core once woken.
#
# usage: bench/tail.sh [TARGET…]        (default: ref target/release/cognihook)
# env:   ROUTE (/webhook/cognigy, the seed rules; or /webhook), TRACE (2, seconds),
#        KEEP=DIR (keep each trace's text there), SKIP_BUILD=1, STEADY_MEMORY=1,
#        REF_ENV (`VAR=value …` for the reference, e.g. "BARE_ROUNDS=2600/10": see
#        examples/bare_baseline.rs)
# The trace's cost slows both servers (p99 rises): compare shapes and shares, and take the
# ratio of p99s from bench/pairs.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret
GW_PORT=18080
ROUTE=${ROUTE:-/webhook/cognigy}
TRACE=${TRACE:-2}
command -v perf >/dev/null || { echo "bench/tail.sh needs perf (apt-get install linux-perf)" >&2; exit 2; }
[ $# -gt 0 ] || set -- ref target/release/cognihook
source bench/common.sh

route_requests "$ROUTE" 1000 "$work/req.lua"
echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $ROUTE; wrk 64 connections; sync = full; ${TRACE} s traced"
n=0
for target in "$@"; do
  n=$((n + 1))
  if [ "$target" = ref ]; then
    # shellcheck disable=SC2086
    env ${REF_ENV:-} COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 0 target/release/examples/bare_baseline \
      "127.0.0.1:$GW_PORT" durable "$work/durable-$n.log" 2>/dev/null &
    server=$!
    pids+=("$server")
    wait_port "$GW_PORT"
    writer=bare-log
  else
    [ -x "$target" ] || { echo "not an executable: $target" >&2; exit 2; }
    gateway_toml "$n"
    start_gateway "$n" "$target"
    server=$gw
    writer=cognihook-write
  fi
  taskset -c 1 wrk -t1 -c64 -d3s -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- warm >/dev/null
  taskset -c 1 wrk -t1 -c64 -d8s --latency -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- "run$n" > "$work/wrk.out" &
  load=$!
  sleep 3
  taskset -c 1 perf record -q -m 1024 -C 0 -o "$work/trace-$n.data" \
    -e sched:sched_switch -e sched:sched_wakeup \
    -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync \
    -e syscalls:sys_enter_writev -e syscalls:sys_enter_recvfrom -- sleep "$TRACE" 2>/dev/null
  wait "$load"
  perf script -i "$work/trace-$n.data" -F comm,tid,time,event,trace > "$work/trace-$n.txt" 2>/dev/null
  echo "== $target: $(awk '/Requests\/sec/ { print $2 }' "$work/wrk.out") req/s under the trace; wrk p50 $(awk '$1 == "50%" { print $2 }' "$work/wrk.out"), p99 $(awk '$1 == "99%" { print $2 }' "$work/wrk.out")"
  python3 bench/tail.py "$work/trace-$n.txt" "$writer"
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$work/trace-$n.txt" "$KEEP/trace-$n.txt"
  fi
  rm -f "$work/trace-$n.data"
  kill -TERM "$server"
  wait "$server" 2>/dev/null || true
  rm -rf "$work/data-$n" "$work/audit-$n.jsonl" "$work/durable-$n.log" 2>/dev/null || true
done
