#!/usr/bin/env bash
# Where a request's CPU goes, by thread: each binary gets a fresh gateway on a new data
# directory (CPU 0; `sync = "full"`, audit on), a 3 s warm-up, then wrk (CPU 1, 64
# connections) on ROUTE for DURATION; the CPU (user + system, from /proc/PID/task/*/stat) of
# each thread name is divided by the requests answered. Give the binaries in the order to run
# them; repeat them to alternate, e.g.
#   bash bench/threads.sh /tmp/old/cognihook target/release/cognihook /tmp/old/cognihook target/release/cognihook
#
# env: ROUTE (/webhook/cognigy, the seed rules; or /webhook), DURATION (15s),
#      SESSIONS (distinct bodies, one session each; 1000), SYSCALLS=1 (also system calls per
#      request per thread, from `perf stat --per-thread`: needs perf), SINK=1 (/webhook with
#      one http sink, as in bench/sink_ab.sh: the receiver on CPU 1; also prints the rows
#      delivered per request during the run, so that CPU per request counts the deliveries),
#      WARM (wrk's warm-up on ROUTE before the measured run, 3s; longer fills the store
#      first, as bench/load.sh's later targets find it), RATE (instead of wrk's saturation,
#      `cognihook simulate` at this many requests a second, 1,000 sessions, on CPU 1: what a
#      request costs below saturation, where every row of a sink is delivered at once),
#      SPLIT=1 (user and system time apart, name/user and name/system)
# `ref` in place of a binary runs the durable reference (`bare_baseline … durable-ring`, as in
# bench/pairs.sh) on the same load: its threads' CPU per request beside the gateway's
# (sixty-fourth session). Not with SINK=1.
# A shared host moves every figure by several per cent between runs: compare builds in
# alternating runs, and several of them.
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret
GW_PORT=18080
ROUTE=${ROUTE:-/webhook/cognigy}
SINK_PORT=18091
[ -n "${SINK:-}" ] && ROUTE=/webhook
DURATION=${DURATION:-15s}
SESSIONS=${SESSIONS:-1000}
[ $# -gt 0 ] || { sed -n 2,23p "$0" >&2; exit 2; }
if [ -n "${SINK:-}" ]; then
  for b in "$@"; do [ "$b" != ref ] || { echo "SINK=1 runs gateways only" >&2; exit 2; }; done
fi
for b in "$@"; do [ "$b" = ref ] || [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
if [ -n "${SYSCALLS:-}" ] && ! command -v perf >/dev/null; then
  echo "SYSCALLS=1 needs perf (apt-get install linux-perf)" >&2; exit 2
fi
SKIP_BUILD=1 source bench/common.sh

route_requests "$ROUTE" "$SESSIONS" "$work/req.lua"
tick=$(getconf CLK_TCK)
if [ -n "${SINK:-}" ]; then
  start_receiver 1 "$SINK_PORT"
fi

# cpu_by_name PID: "name ticks" per thread name (threads that end meanwhile are skipped);
# with SPLIT=1 "name/user" and "name/system" apart.
cpu_by_name() {
  for t in /proc/"$1"/task/*; do
    { n=$(tr ' ' _ < "$t/comm") && awk -v n="$n" -v apart="${SPLIT:-}" '{
        if (apart != "") { print n "/user", $14; print n "/system", $15 } else print n, $14 + $15
      }' "$t/stat"; } 2>/dev/null || true
  done | awk '{ a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}

load_desc="wrk 64 connections"
[ -n "${RATE:-}" ] && load_desc="simulate at $RATE/s"
echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $ROUTE, $load_desc, $DURATION; sync = full"
n=0
for bin in "$@"; do
  n=$((n + 1))
  gateway_toml "$n"
  if [ -n "${SINK:-}" ]; then
    sink_route_toml "$SINK_PORT" >> "$work/c-$n.toml"
  fi
  if [ "$bin" = ref ]; then
    COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 0 target/release/examples/bare_baseline \
      "127.0.0.1:$GW_PORT" durable-ring "$work/ring-$n.log" 2>/dev/null &
    gw=$!
    pids+=("$gw")
    wait_port "$GW_PORT"
  else
    start_gateway "$n" "$bin"
  fi
  taskset -c 1 wrk -t1 -c64 -d"${WARM:-3s}" -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- warm >/dev/null
  if [ -n "${SINK:-}" ]; then
    # From an empty outbox.
    wait_drained 60
  fi
  cpu_by_name "$gw" > "$work/before"
  if [ -n "${RATE:-}" ]; then
    payload=nlu
    [ "$ROUTE" = /webhook ] && payload=flow-event
    sim=$bin
    [ "$bin" = ref ] && sim=target/release/cognihook
    COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 1 "$sim" simulate --url "http://127.0.0.1:$GW_PORT$ROUTE" \
      --payload "$payload" --rate "$RATE" --duration "$DURATION" --sessions 1000 --duplicates 0 \
      --invalid 0 > "$work/sim.out" 2>&1 &
  else
    taskset -c 1 wrk -t1 -c64 -d"$DURATION" -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- "run$n" > "$work/wrk.out" &
  fi
  load=$!
  if [ -n "${SYSCALLS:-}" ]; then
    # The middle of the run, for a whole number of seconds.
    secs=$(( ${DURATION%s} > 4 ? ${DURATION%s} - 2 : 2 ))
    sleep 1
    perf stat --per-thread -x, -e 'syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync,syscalls:sys_enter_pwrite64,syscalls:sys_enter_write,syscalls:sys_enter_futex,syscalls:sys_enter_read,syscalls:sys_enter_readv,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sched_yield' \
      -p "$gw" sleep "$secs" 2> "$work/syscalls" || true
  fi
  wait "$load"
  cpu_by_name "$gw" > "$work/after"
  [ -n "${SINK:-}" ] && pending=$(stat_of outbox_pending)
  if [ -n "${RATE:-}" ]; then
    requests=$(sed -nE 's/^sent ([0-9]+) requests .*/\1/p' "$work/sim.out")
    rps=$(sed -nE 's/^sent .* \(([0-9.]+)\/s\)$/\1/p' "$work/sim.out")
  else
    requests=$(awk '/requests in/ { print $1 }' "$work/wrk.out")
    rps=$(awk '/Requests\/sec/ { print $2 }' "$work/wrk.out")
  fi
  echo "== $bin: $rps req/s; CPU µs per request by thread"
  [ -n "${SINK:-}" ] && echo "  rows delivered per request during the run: $(awk -v r="$requests" -v p="$pending" 'BEGIN { printf "%.2f", (r - p) / r }')"
  join "$work/before" "$work/after" | awk -v r="$requests" -v t="$tick" '
    { d = ($3 - $2) / t * 1e6 / r; total += d; if (d >= 0.005) printf "  %-24s %7.2f\n", $1, d }
    END { printf "  %-24s %7.2f\n", "all threads", total }'
  if [ -n "${SYSCALLS:-}" ]; then
    echo "  system calls per request by thread:"
    # perf's CSV per thread: thread-tid,count,,event,...
    awk -F, -v rps="$rps" -v secs="$secs" '$2 > 0 && $2 ~ /^[0-9]+$/ {
        sub(/-[0-9]+$/, "", $1); sub(/^syscalls:sys_enter_/, "", $4); c[$1 " " $4] += $2 }
      END { for (k in c) if (c[k] / secs / rps >= 0.0005) printf "    %-34s %7.3f\n", k, c[k] / secs / rps }' \
      "$work/syscalls" | sort
  fi
  kill -TERM "$gw"
  wait "$gw" 2>/dev/null || true
  rm -rf "$work/data-$n" "$work/audit-$n.jsonl" "$work/ring-$n.log" 2>/dev/null || true
done
