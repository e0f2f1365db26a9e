#!/usr/bin/env bash
# Instructions per request, by part of the gateway: a repeatable yardstick when wall time is
# too noisy to tell a few per cent apart (the machine is shared). The gateway runs under
# valgrind's callgrind (CPU 0) on a fresh embedded store (`sync = "full"`, audit on); wrk
# (CPU 1) warms it up, the counters are zeroed, wrk sends signed NLU events to
# /webhook/cognigy for DURATION, and the counts are dumped: instructions of every thread
# divided by the requests wrk saw answered.
#
# usage: bench/callgrind.sh [DURATION] [CONNECTIONS]      (defaults: 20s 16)
# env:   BIN (the gateway binary, default target/release/cognihook: another build to compare),
#        SKIP_BUILD=1, KEEP=DIR (keep the callgrind file there, for callgrind_annotate),
#        SINK=1 (one http sink on the route, with [delivery] enabled = false: the outbox rows
#        are written, nothing is sent; deliveries cannot run under valgrind),
#        ROUTE (/webhook/cognigy, the seed rules, default; or /webhook, flow events),
#        CACHE_SIM=1 (valgrind's cache simulation as well: misses of a 32 KiB first-level data
#        cache and of a last level of CACHE_LL, default 1048576,8,64, a core's 1 MiB second
#        level, per request: how much memory a request touches that is not in the cache; the
#        rates of misses are the simulation's, with valgrind's thread switches, not a CPU's),
#        REF=1 (run the durable reference, `bare_baseline … durable`, instead of the gateway:
#        its totals, to compare with the gateway's, sixty-third session),
#        SESSIONS (distinct bodies, one session each; default 1000). valgrind runs at about a
#        twentieth of native speed, so each session gets a twentieth of the events per second
#        it gets in bench/load.sh; SESSIONS=50 gives it as many as a native run at full speed
#        (what decides how much the projector's writing sessions behind saves).
#
# Under valgrind the CPU has no SHA extensions, so SHA-256 (the HMAC, body-hash keys) costs
# several times what it does natively; compare builds with each other, not with perf's shares.
# valgrind also cuts the rate to several hundred requests a second, so work done now and then
# (checkpoints, the key tree's flushes and compactions) falls mostly outside a short run: the
# figures are the per-event work of the request path, the sequencer and the projector.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-20s}
CONNS=${2:-16}
SECRET=bench-secret
GW_PORT=18080
BIN=${BIN:-target/release/cognihook}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
source bench/common.sh

ROUTE=${ROUTE:-/webhook/cognigy}
if [ -n "${SINK:-}" ] && [ "$ROUTE" != /webhook/cognigy ]; then
  echo "SINK=1 runs the seed route /webhook/cognigy only" >&2; exit 2
fi
route_requests "$ROUTE" "${SESSIONS:-1000}" "$work/nlu.lua"
cat > "$work/c.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[limits]
# valgrind runs the gateway ~50x slower: keep requests from being refused as late.
deadline = "60s"
[store]
data_dir = "$work/data"
sync = "full"
[audit]
path = "$work/audit.jsonl"
TOML
if [ -n "${SINK:-}" ]; then
  cat >> "$work/c.toml" <<'TOML'
[delivery]
enabled = false
[sink.backend]
kind = "http"
url = "http://127.0.0.1:9/events"
[[route]]
TOML
  # The seed route as defaults.toml defines it, with the sink.
  sed -n '/^name = "nlu-orders"/,/^sinks = /p' src/config/defaults.toml \
    | sed 's/^sinks = .*/sinks = ["backend"]/' >> "$work/c.toml"
  grep -q '^sinks = \["backend"\]' "$work/c.toml" || { echo "the seed route is not in defaults.toml" >&2; exit 1; }
fi
cache=()
[ -n "${CACHE_SIM:-}" ] && cache=(--cache-sim=yes "--LL=${CACHE_LL:-1048576,8,64}")
if [ -n "${REF:-}" ]; then
  BIN=target/release/examples/bare_baseline
  COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 0 valgrind --tool=callgrind "${cache[@]}" \
    --callgrind-out-file="$work/cg.out" "$BIN" "127.0.0.1:$GW_PORT" durable "$work/durable.log" \
    2>"$work/gw.log" &
else
  COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c 0 valgrind --tool=callgrind \
    "${cache[@]}" --callgrind-out-file="$work/cg.out" "$BIN" --config "$work/c.toml" serve \
    2>"$work/gw.log" &
fi
gw=$!
pids+=("$gw")
for _ in $(seq 1 600); do
  (exec 3<>"/dev/tcp/127.0.0.1/$GW_PORT") 2>/dev/null && break
  sleep 0.1
done
taskset -c 1 wrk -t1 -c"$CONNS" -d5s -s "$work/nlu.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- warm >/dev/null
callgrind_control -z "$gw" >/dev/null 2>&1
out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" -s "$work/nlu.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- run)
callgrind_control -d "$gw" >/dev/null 2>&1
kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
requests=$(echo "$out" | awk '/requests in/ { print $1 }')
errors=$(echo "$out" | awk '/Non-2xx/ { print $5 }')
dump=$(ls "$work"/cg.out.* | head -1)
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$dump" "$KEEP/"

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $BIN; $ROUTE; wrk $CONNS connections, $DURATION"
echo "requests answered: $requests (non-2xx: ${errors:-0})"
# The tokio workers' part is the tasks they poll (with whole-program optimisation
# `worker::run` is inlined away, and so was this row before 2026-12-02, eighteenth session).
if [ -n "${CACHE_SIM:-}" ]; then
  # The totals line: instructions, data reads and writes, then the misses (first level:
  # instructions, data read, data write; last level: the same).
  callgrind_annotate "$dump" 2>/dev/null | awk -v n="$requests" -v ll="${CACHE_LL:-1048576,8,64}" '/PROGRAM TOTALS/ {
    gsub(/\([^)]*\)/, ""); gsub(",", "")
    printf "misses per request: first-level data %.0f read, %.0f written; last level (%s) %.1f read, %.1f written\n", $5 / n, $6 / n, ll, $8 / n, $9 / n
  }'
fi
if [ -n "${REF:-}" ]; then
  callgrind_annotate "$dump" 2>/dev/null | awk -v n="$requests" '/PROGRAM TOTALS/ { gsub(",", ""); printf "instructions per request: %.0f\n", $1 / n }'
  exit 0
fi
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | python3 bench/callgrind_parts.py request "$requests" \
  'request path (tokio tasks)=tokio::runtime::task::raw::poll' \
  'sequencer=cognihook::store::sqlite::sequencer::Sequencer::run' \
  'projector=cognihook::store::sqlite::project::run|cognihook::store::sqlite::project::apply_batch' \
  'checkpointer=cognihook::store::sqlite::project::start_checkpointer::{{closure}}::{{closure}}'
