#!/usr/bin/env bash
# Delivery lag under sustained load: a fresh gateway (CPU 0) with one http sink to a fast
# receiver (examples/bare_baseline accept-all, CPU 1), which notes each delivery's lag from the
# time in its event id (stamped when the gateway received the event) to its arrival.
#
# 1. Saturation and burst: wrk (64 connections, CPU 1) for BURST on /webhook gives the
#    saturation rate with the sink attached; the backlog left at the end is timed until it has
#    drained, and its drain rate is compared with the rate it grew at during the burst.
#    Then the same burst with the sink paused (an outage), resumed: the backlog's drain rate.
#    Then simulate asked for 3× that rate: the saturation rate of its own traffic.
# 2. Fixed rates: `cognihook simulate` (CPU 1) at 25 %, 50 % and 80 % of simulate's saturation rate
#    for DURATION each (2,000 sessions); per rate, p50/p99/max of the lag and the outbox's pending count (peak,
#    and at the end of the load: a backlog that keeps growing ends at its peak).
#
# usage: bench/delivery_lag.sh [DURATION]      (default 60s per rate)
# env:   SYNC=full|normal|off (default full), BURST (default 10s), PCTS (default "25 50 80"),
#        DELIVERY (a [delivery] table to use, e.g. '[delivery]\nbusy = { interval = "0s" }'),
#        BATCH (the sink's batch.max: events per request, as JSON arrays; default unbatched),
#        SESSIONS (conversations simulate runs side by side, each one request at a time; default 2000: fewer cannot hold high rates once answers slow),
#        BIN (the gateway binary, default target/release/cognihook), SKIP_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-60s}
BURST=${BURST:-10s}
PCTS=${PCTS:-25 50 80}
SYNC=${SYNC:-full}
SECRET=bench-secret
SERVER_CPU=0
CLIENT_CPU=1
GW_PORT=18080
SINK_PORT=18091

BIN=${BIN:-target/release/cognihook}
source bench/common.sh

python3 bench/gen_requests.py flow-event /webhook "$SECRET" 1000 "$work/flow.lua"

start_receiver "$CLIENT_CPU" "$SINK_PORT"

cat > "$work/cognihook.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
[store]
data_dir = "$work/data"
sync = "$SYNC"
[audit]
path = "$work/audit.jsonl"
${DELIVERY:-}
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
ADMIN=bench-admin-token
COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_ADMIN_TOKEN=$ADMIN COGNIHOOK_LOG=warn taskset -c "$SERVER_CPU" \
  "$BIN" --config "$work/cognihook.toml" serve 2>>"$work/gw.log" &
pids+=($!)
wait_port "$GW_PORT"

lag() { curl -s "http://127.0.0.1:$SINK_PORT/lag"; }
now() { date +%s.%N; }
# drain: until nothing is pending (10 min at most); prints the seconds it took.
drain() {
  local t0; t0=$(now)
  wait_drained 600
  python3 -c "print(f'{$(now) - $t0:.2f}')"
}

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); store.sync=$SYNC; http sink concurrency 32, batch ${BATCH:-off}; gateway on CPU $SERVER_CPU, load and receiver on CPU $CLIENT_CPU"

# Warm-up, then the saturating burst.
taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d3s -s "$work/flow.lua" "http://127.0.0.1:$GW_PORT/webhook" -- warm >/dev/null
drain >/dev/null
lag >/dev/null
c0=$(stat_of events_committed)
out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"$BURST" -s "$work/flow.lua" "http://127.0.0.1:$GW_PORT/webhook" -- burst)
sat=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
left=$(stat_of outbox_pending)
c1=$(stat_of events_committed)
took=$(drain)
burst_lag=$(lag)
python3 - "$sat" "$left" "$((c1 - c0))" "$took" "$BURST" "$burst_lag" <<'PY'
import json, sys
sat, left, accepted, took, burst, lag = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6])
secs = float(burst.rstrip("s"))
grew = left / secs
drained = left / took if took > 0 else float("inf")
print(f"saturation (wrk, 64 connections, {burst}): {sat:.0f} req/s accepted with the sink; {accepted} events, "
      f"{accepted - left} delivered during the burst")
print(f"burst backlog: {left} pending at its end (grew at {grew:.0f}/s), drained in {took:.1f} s "
      f"({drained:.0f}/s): drain/growth {drained / grew if grew else float('inf'):.2f}x; "
      f"lag p50 {lag['p50'] / 1000:.2f} s, p99 {lag['p99'] / 1000:.2f} s, max {lag['max'] / 1000:.2f} s")
PY

# A sink outage's backlog: the sink paused for a burst as long, then resumed; how fast the
# backlog drains against the rate it was accepted at (with a fast sink, the first burst may
# leave none).
sink_switch() {
  curl -s -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d '{}' "http://127.0.0.1:$GW_PORT/admin/sinks/backend/$1" >/dev/null
}
sink_switch pause
out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"$BURST" -s "$work/flow.lua" "http://127.0.0.1:$GW_PORT/webhook" -- outage)
paused_rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
backlog=$(stat_of outbox_pending)
sink_switch resume
took=$(drain)
lag >/dev/null
python3 -c "r=$backlog/max($took,0.01); print(f'outage backlog: {$backlog} accepted at {$paused_rate:.0f}/s with the sink paused, drained in {$took:.1f} s ({r:.0f}/s): {r/$paused_rate:.2f}x the rate it was accepted at')"

# Saturation for the fixed-rate phases' own traffic: simulate's conversations cost more per
# request than wrk's recycled bodies (new sessions all the time), so wrk's rate overstates
# what they can reach. Asked for three times wrk's rate, simulate reaches what the gateway
# takes of them.
COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c "$CLIENT_CPU" target/release/cognihook simulate \
  --url "http://127.0.0.1:$GW_PORT/webhook" --payload flow-event --rate "$(python3 -c "print(round($sat * 3))")" \
  --duration "$BURST" --sessions "${SESSIONS:-2000}" --duplicates 0 --invalid 0 >"$work/sim.out" 2>"$work/sim.err" || true
simsat=$(grep -oE '\(([0-9.]+)/s\)' "$work/sim.out" | tr -d '()/s' | head -1)
drain >/dev/null
lag >/dev/null
echo "saturation with simulated conversations (${SESSIONS:-2000} sessions, $BURST): ${simsat:-?} req/s: the base of the fixed rates"
echo "${simsat:-$sat}" > "$work/sat"

printf '%-6s %9s %9s %9s %9s %9s %12s %12s\n' "load" "req/s" "sent/s" "lag p50" "lag p99" "lag max" "peak pending" "end pending"
for pct in $PCTS; do
  rate=$(python3 -c "print(round($(cat "$work/sat") * $pct / 100))")
  lag >/dev/null
  COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c "$CLIENT_CPU" target/release/cognihook simulate \
    --url "http://127.0.0.1:$GW_PORT/webhook" --payload flow-event --rate "$rate" \
    --duration "$DURATION" --sessions "${SESSIONS:-2000}" --duplicates 0 --invalid 0 >"$work/sim.out" 2>"$work/sim.err" &
  sim=$!
  peak=0
  while kill -0 "$sim" 2>/dev/null; do
    p=$(stat_of outbox_pending 2>/dev/null || echo 0)
    [ "$p" -gt "$peak" ] && peak=$p
    last=$p
    sleep 1
  done
  wait "$sim" || true
  end=$(stat_of outbox_pending)
  drain >/dev/null
  sent=$(grep -oE '\(([0-9.]+)/s\)' "$work/sim.out" | tr -d '()/s' | head -1)
  python3 - "$pct" "$rate" "${sent:-0}" "$(lag)" "$peak" "$end" <<'PY'
import json, sys
pct, rate, sent, lag, peak, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], sys.argv[6]
print(f"{pct + '%':6} {rate:>9} {sent:>9.0f} {lag['p50'] / 1000:>8.3f}s {lag['p99'] / 1000:>8.3f}s "
      f"{lag['max'] / 1000:>8.3f}s {peak:>12} {end:>12}")
PY
done
