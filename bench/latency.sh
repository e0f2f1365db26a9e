#!/usr/bin/env bash
# Latency below saturation: `cognihook simulate` (on CPU 1) sends Cognigy NLU traffic at fixed
# rates to a fresh gateway (on CPU 0) and reports p50/p99 per rate; about half the requests are
# conversations the route's rules reject on purpose (422, nothing committed). Before each
# gateway run, the same traffic goes to the durable reference (examples/bare_baseline.rs,
# `durable`: every body appended and flushed, no rules), so each rate's line also shows the
# floor this disk gives in the same minute and cognihook's p99 as a multiple of it. Each line
# also gives what the disk was asked to write per 2xx answer (KiB, from /proc/diskstats for the
# block device under the work directory, so other writers on that device count too; "?" where
# the directory is on no block device, e.g. tmpfs): the log alone, for the reference, against
# everything the store writes (log, database, WAL, checkpoints, the key tree, the audit log).
#
# usage: bench/latency.sh [RATE...]        (default: 1000 2000 5000 10000)
# env:   SYNC=full|normal|off (default full), DURATION (default 10s), BIN (default
#        target/release/cognihook), SKIP_BUILD=1, BACKGROUND_NICE (store.background_nice,
#        default 0), WARM (e.g. 30s: the gateway first takes this long of the same traffic,
#        unmeasured, so the figures are a warmed store's: its first spare segment made, its
#        database and key tree past their first checkpoints and flushes)
set -euo pipefail
cd "$(dirname "$0")/.."

RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(1000 2000 5000 10000)
SYNC=${SYNC:-full}
DURATION=${DURATION:-10s}
BIN=${BIN:-target/release/cognihook}
PORT=18080
SECRET=bench-secret

if [ -z "${SKIP_BUILD:-}" ]; then
  if [ "$BIN" = target/release/cognihook ]; then
    cargo build --release --bin cognihook --example bare_baseline >&2
  else
    cargo build --release --example bare_baseline >&2
  fi
fi
REF_PORT=18092
work=$(mktemp -d)
# The block device the work directory is on, as /proc/diskstats names it (empty if none).
disk=$(basename "$(df --output=source "$work" | tail -1)")
grep -q " $disk " /proc/diskstats 2>/dev/null || disk=
sectors_written() { if [ -n "$disk" ]; then awk -v d="$disk" '$3 == d { print $10 }' /proc/diskstats; else echo 0; fi; }
# simulate RATE PORT -> "p50 p99 KiB" (latencies in ms; KiB written to the disk per 2xx answer)
simulate() {
  local before after
  if [ -n "${3:-}" ]; then
    COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 1 "$BIN" simulate \
      --url "http://127.0.0.1:$2/webhook/cognigy" --rate "$1" --duration "$3" \
      --sessions 1000 --duplicates 0 --invalid 0 > /dev/null 2>&1
  fi
  before=$(sectors_written)
  COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 1 "$BIN" simulate \
    --url "http://127.0.0.1:$2/webhook/cognigy" --rate "$1" --duration "$DURATION" \
    --sessions 1000 --duplicates 0 --invalid 0 > "$work/simulate.out" 2>&1
  after=$(sectors_written)
  python3 - "$work/simulate.out" "$before" "$after" "$disk" <<'PY2'
import re, sys
t = open(sys.argv[1]).read()
lat = re.search(r"^latency: p50 ([0-9.]+) ms, p99 ([0-9.]+) ms", t, re.M)
ok = re.search(r"^status: .*?\b200: (\d+)", t, re.M)
if not lat:
    sys.exit(0)
kib = "?"
if sys.argv[4] and ok and int(ok.group(1)) > 0:
    kib = f"{(int(sys.argv[3]) - int(sys.argv[2])) * 512 / 1024 / int(ok.group(1)):.1f}"
print(lat.group(1), lat.group(2), kib)
PY2
}
gw=
ref=
cleanup() { [ -n "$gw" ] && kill "$gw" 2>/dev/null; [ -n "$ref" ] && kill "$ref" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); store.sync=$SYNC; $DURATION per rate${WARM:+, the gateway warmed $WARM first}"
wait_for() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2; exit 1
}
for rate in "${RATES[@]}"; do
  rm -f "$work/durable.log"
  COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 0 target/release/examples/bare_baseline \
    "127.0.0.1:$REF_PORT" durable "$work/durable.log" 2>/dev/null &
  ref=$!
  wait_for "$REF_PORT"
  read -r ref50 ref99 refkib < <(simulate "$rate" "$REF_PORT"; echo)
  kill "$ref"; wait "$ref" 2>/dev/null || true
  ref=
  rm -rf "$work/data"
  printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\ndata_dir = "%s/data"\nsync = "%s"\nbackground_nice = %s\n[audit]\npath = "%s/audit.jsonl"\n' \
    "$PORT" "$work" "$SYNC" "${BACKGROUND_NICE:-0}" "$work" > "$work/c.toml"
  COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c 0 "$BIN" --config "$work/c.toml" serve \
    2>>"$work/gw.log" &
  gw=$!
  wait_for "$PORT"
  read -r gw50 gw99 gwkib < <(simulate "$rate" "$PORT" "${WARM:-}"; echo)
  ratio=$(python3 -c "import sys; a, b = sys.argv[1:]; print(f'{float(a) / float(b):.1f}x' if a and b and float(b) > 0 else '?')" "${gw99:-}" "${ref99:-}")
  echo "rate $rate/s: cognihook p50 ${gw50:-?} ms, p99 ${gw99:-?} ms; durable reference p50 ${ref50:-?} ms, p99 ${ref99:-?} ms; p99 $ratio the reference's; disk writes per 2xx ${gwkib:-?} KiB, the reference's ${refkib:-?} KiB"
  kill -TERM "$gw"
  wait "$gw" 2>/dev/null || true
  gw=
done
