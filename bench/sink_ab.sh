#!/usr/bin/env bash
# A/B of what a sink costs ingest: fresh gateways one after the other, each on a new data
# directory, warmed up then measured with wrk on /webhook (same pinning as bench/load.sh:
# gateway on CPU 0, wrk and the receiving end on CPU 1). Give the variants in the order to run
# them; repeat them to alternate, e.g.  bash bench/sink_ab.sh none sink none sink
#
#   none         /webhook with no sink
#   sink         one http sink (the default [delivery] settings)
#   no-delivery  the sink attached, [delivery] enabled = false (only the outbox rows are written)
#   sink-nobusy  the sink with busy = { interval = "0s" } (delivery never holds back)
#   sink-share:X the sink with busy.share = X (sends while saturated, per row accepted)
#
# env: WARM (default 5s), DURATION (default 10s), SKIP_BUILD=1, BIN (the gateway binary,
#      default target/release/cognihook)
# Prints per variant: req/s, outbox rows still pending just after the run, the gateway's CPU
# ticks, and the size of its data directory.
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret
GW_PORT=18080
SINK_PORT=18091
WARM=${WARM:-5s}
DURATION=${DURATION:-10s}
[ $# -gt 0 ] || { sed -n 2,15p "$0" >&2; exit 2; }
for v in "$@"; do
  case "$v" in none|sink|no-delivery|sink-nobusy|sink-share:*) ;; *) echo "unknown variant: $v" >&2; exit 2;; esac
done

source bench/common.sh

python3 bench/gen_requests.py flow-event /webhook "$SECRET" 1000 "$work/flow.lua"
start_receiver 1 "$SINK_PORT"

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); warm-up $WARM, measured $DURATION"
n=0
for v in "$@"; do
  n=$((n + 1))
  data="$work/data-$n-$v"
  {
    echo "[server]"
    echo "listen = \"127.0.0.1:$GW_PORT\""
    echo "[store]"
    echo "data_dir = \"$data\""
    echo "[audit]"
    echo "path = \"$work/audit-$n.jsonl\""
    echo "[delivery]"
    [ "$v" = no-delivery ] && echo "enabled = false"
    [ "$v" = sink-nobusy ] && echo 'busy = { interval = "0s" }'
    case "$v" in sink-share:*) echo "busy = { share = ${v#sink-share:} }";; esac
    echo "[sink.backend]"
    echo 'kind = "http"'
    echo "url = \"http://127.0.0.1:$SINK_PORT/events\""
    echo "concurrency = 32"
    echo "[[route]]"
    echo 'name = "flow-events"'
    echo 'path = "/webhook"'
    echo 'payload = "flow-event"'
    echo 'auth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }'
    [ "$v" != none ] && echo 'sinks = ["backend"]'
    true
  } > "$work/$n.toml"
  COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c 0 \
    "${BIN:-target/release/cognihook}" --config "$work/$n.toml" serve 2>>"$work/gw.log" &
  gw=$!
  pids+=("$gw")
  wait_port "$GW_PORT"
  taskset -c 1 wrk -t1 -c64 -d"$WARM" -s "$work/flow.lua" "http://127.0.0.1:$GW_PORT/webhook" -- warm >/dev/null
  if [ "$v" != none ] && [ "$v" != no-delivery ]; then
    # Measure from an empty outbox.
    wait_drained 60
  fi
  rps=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" -s "$work/flow.lua" "http://127.0.0.1:$GW_PORT/webhook" -- "$v$n" \
    | awk '/Requests\/sec/ { print $2 }')
  pending=$(stat_of outbox_pending)
  ticks=$(awk '{ print $14 + $15 }' "/proc/$gw/stat")
  echo "$v req/s=$rps pending_after=$pending cpu_ticks=$ticks data=$(du -sm "$data" | cut -f1)MB"
  kill -TERM "$gw"
  wait "$gw" 2>/dev/null || true
done
