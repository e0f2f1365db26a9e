#!/usr/bin/env bash
# Load benchmark: cognihook on both built-in routes against two references in one run, each
# server pinned to CPU 0 and wrk pinned to CPU 1 (examples/bare_baseline.rs): a bare hyper server
# that only verifies the HMAC and parses the JSON, and the same server in durable mode, which
# also appends each verified body to a file and answers after its group's fdatasync: the floor
# of what a durable acknowledgement costs. cognihook's ratios are printed against both, and
# against a third run of that server writing in place into a file of zeros made first
# (`durable-ring`: no journal commit per fdatasync, as the gateway's log segments made ahead).
#
# usage: bench/load.sh [DURATION] [CONNECTIONS]      (defaults: 10s 64)
# env:   SYNC=full|normal|off (store.sync, default full), SKIP_BUILD=1, BIN (the gateway
#        binary, default target/release/cognihook: another build to compare in the same run),
#        PG_URL=postgres://… to also measure /webhook on PostgreSQL (a fresh schema is made;
#        the PostgreSQL server itself is not pinned, so it uses both CPUs), NICE (the sink
#        run's delivery.nice, default 19 as in defaults.toml), BATCH (the sink's batch.max, default unbatched), BUSY
#        (its delivery.busy table, e.g. '{ interval = "0s" }')
#        KEYS=random|ordered (Idempotency-Key order, default random: see bench/gen_requests.py)
#        BACKGROUND_NICE (store.background_nice of the embedded store's runs, default 0)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-10s}
CONNS=${2:-64}
SYNC=${SYNC:-full}
SECRET=bench-secret
SERVER_CPU=0
CLIENT_CPU=1
BASE_PORT=18090
GW_PORT=18080
SINK_PORT=18091
DURABLE_PORT=18092

BIN=${BIN:-target/release/cognihook}
source bench/common.sh

python3 bench/gen_requests.py flow-event /webhook "$SECRET" 1000 "$work/flow.lua"
python3 bench/gen_requests.py nlu /webhook/cognigy "$SECRET" 1000 "$work/nlu.lua"

# run_wrk NAME URL SCRIPT RUN_ID -> prints "rps p50_ms p99_ms non2xx"
run_wrk() {
  local out
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$3" "$2" -- "$4")
  echo "$out" > "$work/$1.wrk"
  python3 - "$work/$1.wrk" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
errs = int(m.group(1)) if m else 0
sock = re.search(r"Socket errors: (.*)", t)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {errs} {'sockerr' if sock else 'ok'}")
PY
}

peak_rss_mib() { awk '/VmHWM/ { printf "%.1f", $2/1024 }' "/proc/$1/status"; }

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "# wrk: 1 thread, $CONNS connections, $DURATION per target; servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; store.sync=$SYNC" >&2

# Reference: bare hyper (HMAC + JSON parse).
COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c "$SERVER_CPU" target/release/examples/bare_baseline "127.0.0.1:$BASE_PORT" 2>/dev/null &
pids+=($!); base_pid=$!
wait_port "$BASE_PORT"
run_wrk warm-base "http://127.0.0.1:$BASE_PORT/webhook" "$work/flow.lua" warm >/dev/null
base=$(run_wrk base "http://127.0.0.1:$BASE_PORT/webhook" "$work/flow.lua" base)
base_rss=$(peak_rss_mib "$base_pid")
kill "$base_pid"

# durable_reference MODE: the bare server in a durable MODE (see examples/bare_baseline.rs) on a
# file of its own, warmed and measured; sets ref_out (run_wrk's line) and ref_rss.
durable_reference() {
  local mode=$1 pid
  COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c "$SERVER_CPU" target/release/examples/bare_baseline \
    "127.0.0.1:$DURABLE_PORT" "$mode" "$work/$mode.log" 2>/dev/null &
  pid=$!
  pids+=("$pid")
  wait_port "$DURABLE_PORT"
  run_wrk "warm-$mode" "http://127.0.0.1:$DURABLE_PORT/webhook" "$work/flow.lua" warm >/dev/null
  ref_out=$(run_wrk "$mode" "http://127.0.0.1:$DURABLE_PORT/webhook" "$work/flow.lua" "$mode")
  ref_rss=$(peak_rss_mib "$pid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -f "$work/$mode.log"
}

# Reference: the same, durable (append + fdatasync per group, answer after it).
durable_reference durable
durable=$ref_out durable_rss=$ref_rss
# Reference: the same, writing in place into a file of zeros made first (durable-ring): each
# fdatasync carries only data, as the gateway's log segments made ahead do.
durable_reference durable-ring
ring=$ref_out ring_rss=$ref_rss

# cognihook on the embedded store.
start_gateway() { # CONFIG -> sets gw_pid
  COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c "$SERVER_CPU" \
    "$BIN" --config "$1" serve 2>>"$work/gw.log" &
  gw_pid=$!
  pids+=("$gw_pid")
  wait_port "$GW_PORT"
}
stop_gateway() { kill -TERM "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; }

cat > "$work/cognihook.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[store]
data_dir = "$work/data"
sync = "$SYNC"
background_nice = ${BACKGROUND_NICE:-0}
[audit]
path = "$work/audit.jsonl"
TOML
start_gateway "$work/cognihook.toml"
run_wrk warm-gw "http://127.0.0.1:$GW_PORT/webhook" "$work/flow.lua" warm >/dev/null
flow=$(run_wrk flow "http://127.0.0.1:$GW_PORT/webhook" "$work/flow.lua" flow)
gw_rss=$(peak_rss_mib "$gw_pid")
committed=$(stat_of events_committed)
stop_gateway

# /webhook/cognigy on a gateway and store of its own, warmed on its own route as /webhook is
# above. Until the fortieth session it ran on the same gateway right after /webhook's run,
# and so inherited that run's store and whatever the projector had still to apply
# (bench/README.md, fortieth session).
sed "s|$work/data\"|$work/data-nlu\"|; s|$work/audit.jsonl|$work/audit-nlu.jsonl|" \
  "$work/cognihook.toml" > "$work/cognihook-nlu.toml"
start_gateway "$work/cognihook-nlu.toml"
run_wrk warm-nlu "http://127.0.0.1:$GW_PORT/webhook/cognigy" "$work/nlu.lua" warm >/dev/null
nlu=$(run_wrk nlu "http://127.0.0.1:$GW_PORT/webhook/cognigy" "$work/nlu.lua" nlu)
nlu_rss=$(peak_rss_mib "$gw_pid")
committed=$((committed + $(stat_of events_committed)))
stop_gateway
rm -rf "$work/data" "$work/data-nlu"

# The same /webhook route with one http sink attached; the receiving end (examples/bare_baseline
# in accept-all mode) runs on the client CPU.
start_receiver "$CLIENT_CPU" "$SINK_PORT"
cat > "$work/cognihook-sink.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[store]
data_dir = "$work/data-sink"
sync = "$SYNC"
background_nice = ${BACKGROUND_NICE:-0}
[audit]
path = "$work/audit-sink.jsonl"
[delivery]
nice = ${NICE:-19}
${BUSY:+busy = $BUSY}
[sink.backend]
kind = "http"
url = "http://127.0.0.1:$SINK_PORT/events"
concurrency = 32
${BATCH:+batch = { max = $BATCH \}}
[[route]]
name = "flow-events"
path = "/webhook"
payload = "flow-event"
auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }
sinks = ["backend"]
TOML
start_gateway "$work/cognihook-sink.toml"
run_wrk warm-sink "http://127.0.0.1:$GW_PORT/webhook" "$work/flow.lua" warm >/dev/null
# Let the warm-up's deliveries drain before measuring.
wait_drained 60
t0=$(date +%s.%N); c0=$(stat_of events_committed)
withsink=$(run_wrk flow-sink "http://127.0.0.1:$GW_PORT/webhook" "$work/flow.lua" sink)
# The backlog the load left, and how fast it drains once the load stops.
backlog=$(stat_of outbox_pending); t_end=$(date +%s.%N)
wait_drained
t1=$(date +%s.%N); c1=$(stat_of events_committed)
deliveries_per_s=$(python3 -c "print(round(($c1 - $c0) / ($t1 - $t0)))")
drain="$backlog $(python3 -c "print(round($backlog / max($t1 - $t_end, 1e-9)))")"
sink_rss=$(peak_rss_mib "$gw_pid")
stop_gateway

# The same /webhook route on PostgreSQL, in a schema of its own.
pg="- - - - -"; pg_rss="-"
if [ -n "${PG_URL:-}" ]; then
  schema="bench_$(date +%s)_$$"
  psql "$PG_URL" -qc "CREATE SCHEMA $schema" >/dev/null
  sep='?'; case "$PG_URL" in *\?*) sep='&';; esac
  cat > "$work/cognihook-pg.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[store]
url = "${PG_URL}${sep}options=-csearch_path%3D${schema}"
[audit]
path = "$work/audit-pg.jsonl"
TOML
  start_gateway "$work/cognihook-pg.toml"
  run_wrk warm-pg "http://127.0.0.1:$GW_PORT/webhook" "$work/flow.lua" warm >/dev/null
  pg=$(run_wrk flow-pg "http://127.0.0.1:$GW_PORT/webhook" "$work/flow.lua" pg)
  pg_rss=$(peak_rss_mib "$gw_pid")
  stop_gateway
  psql "$PG_URL" -qc "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1
fi

python3 - "$base" "$flow" "$nlu" "$withsink" "$base_rss" "$gw_rss" "$sink_rss" "$committed" "$deliveries_per_s" "$pg" "$pg_rss" "$durable" "$durable_rss" "$nlu_rss" "$drain" "$ring" "$ring_rss" <<'PY'
import sys
base, flow, nlu, withsink = (s.split() for s in sys.argv[1:5])
base_rss, gw_rss, sink_rss, committed, dps = sys.argv[5:10]
pg, pg_rss = sys.argv[10].split(), sys.argv[11]
durable, durable_rss = sys.argv[12].split(), sys.argv[13]
nlu_rss = sys.argv[14]
ring, ring_rss = sys.argv[16].split(), sys.argv[17]
rows = [("bare hyper (HMAC + JSON)", base, base_rss),
        ("bare + append + fdatasync (durable)", durable, durable_rss),
        ("bare + ring + fdatasync (pre-filled)", ring, ring_rss),
        ("cognihook POST /webhook", flow, gw_rss),
        ("cognihook POST /webhook/cognigy", nlu, nlu_rss),
        ("cognihook POST /webhook + http sink", withsink, sink_rss)]
if pg[0] != "-":
    rows.append(("cognihook POST /webhook on PostgreSQL", pg, pg_rss))
print(f"{'target':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'peak RSS MiB':>13} {'vs bare':>8} {'vs durable':>11} {'p99 vs durable':>15}")
b, d, dp99 = float(base[0]), float(durable[0]), float(durable[2])
for name, r, rss in rows:
    print(f"{name:36} {r[0]:>9} {r[1]:>8} {r[2]:>8} {r[3]:>8} {rss:>13} {float(r[0]) / b:>7.2f}x {float(r[0]) / d:>10.2f}x {float(r[2]) / dp99:>14.2f}x")
g, gp99 = float(ring[0]), float(ring[2])
print("against the pre-filled ring reference: " + "; ".join(
    f"{name} {float(r[0]) / g:.2f}x req/s, p99 {float(r[2]) / gp99:.2f}x"
    for name, r in (("/webhook", flow), ("/webhook/cognigy", nlu))))
print(f"ingest with one http sink vs none: {float(withsink[0]) / float(flow[0]):.2f}x")
print(f"deliveries/s (accepted and delivered, measured run until the outbox drained): {dps}")
backlog, drain_rate = (int(x) for x in sys.argv[15].split())
if backlog:
    print(f"backlog when the load stopped: {backlog} rows, drained at {drain_rate}/s "
          f"({drain_rate / float(withsink[0]):.2f}x the ingest rate with the sink)")
else:
    print("backlog when the load stopped: none (deliveries kept pace)")
print(f"events committed by cognihook during the no-sink runs: {committed}")
if pg[0] != "-":
    print(f"PostgreSQL vs SQLite on /webhook: {float(pg[0]) / float(flow[0]):.2f}x")
PY
