#!/usr/bin/env bash
# Latency below saturation: `cognihook simulate` (on CPU 1) sends Cognigy NLU traffic at fixed
# rates to a fresh gateway (on CPU 0) and reports p50/p99 per rate; about half the requests are
# conversations the route's rules reject on purpose (422, nothing committed).
#
# usage: bench/latency.sh [RATE...]        (default: 1000 2000 5000 10000)
# env:   SYNC=full|normal|off (default full), DURATION (default 10s), BIN (default
#        target/release/cognihook), SKIP_BUILD=1, BACKGROUND_NICE (store.background_nice,
#        default 0)
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(1000 2000 5000 10000)
SYNC=${SYNC:-full}
DURATION=${DURATION:-10s}
BIN=${BIN:-target/release/cognihook}
PORT=18080
SECRET=bench-secret

if [ -z "${SKIP_BUILD:-}" ] && [ "$BIN" = target/release/cognihook ]; then
  cargo build --release --bin cognihook >&2
fi
work=$(mktemp -d)
gw=
cleanup() { [ -n "$gw" ] && kill "$gw" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); store.sync=$SYNC; $DURATION per rate"
for rate in "${RATES[@]}"; do
  rm -rf "$work/data"
  printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\ndata_dir = "%s/data"\nsync = "%s"\nbackground_nice = %s\n[audit]\npath = "%s/audit.jsonl"\n' \
    "$PORT" "$work" "$SYNC" "${BACKGROUND_NICE:-0}" "$work" > "$work/c.toml"
  COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c 0 "$BIN" --config "$work/c.toml" serve \
    2>>"$work/gw.log" &
  gw=$!
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
  done
  line=$(COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 1 "$BIN" simulate \
    --url "http://127.0.0.1:$PORT/webhook/cognigy" --rate "$rate" --duration "$DURATION" \
    --sessions 1000 --duplicates 0 --invalid 0 2>&1 | grep -E '^latency' || echo "latency: (no summary)")
  echo "rate $rate/s: $line"
  kill -TERM "$gw"
  wait "$gw" 2>/dev/null || true
  gw=
done
