#!/usr/bin/env bash
# cognihook against the durable reference, alternating: reference, gateway, reference, …,
# reference, each a fresh server (the gateway on a new data directory; `sync = "full"`, audit
# on) on CPU 0, warmed up, then measured with wrk (CPU 1, 64 connections, --latency) on the
# same bodies. Each gateway run is compared with the mean of the two reference runs around
# it, so a host whose speed drifts during the script moves both sides of each ratio.
# bench/load.sh measures every target once; this is the script to judge issue 10's two lines
# (0.7× the reference's req/s, p99 at most 1.5× its p99) on a noisy host.
#
# usage: bench/pairs.sh [PAIRS]                    (default 4: five references, four gateways)
# env:   ROUTE (/webhook/cognigy, the seed rules and NLU bodies; or /webhook, flow events),
#        WARM (3s), DURATION (10s), BIN (the gateway, default target/release/cognihook),
#        SKIP_BUILD=1, STEADY_MEMORY=1 (see bench/common.sh), REF (durable, the default, or
#        durable-ring: the reference writing in place into a file of zeros made first)
# Prints each run (req/s, p50, p99; p75 and p90 in brackets; the share of its core the server
# used and its CPU per request), then per gateway run its ratios to the references around it,
# the median of each ratio, the ratios of the medians of all runs, and the CPU medians. A
# reference under ~95 % of its core was waiting for the disk: its rate and p99 are then the
# disk's (the sixty-third entry), and the CPU per request is the ratio to read.
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret
GW_PORT=18080
ROUTE=${ROUTE:-/webhook/cognigy}
WARM=${WARM:-3s}
DURATION=${DURATION:-10s}
PAIRS=${1:-4}
BIN=${BIN:-target/release/cognihook}
REF=${REF:-durable}
source bench/common.sh

route_requests "$ROUTE" 1000 "$work/req.lua"

tick=$(getconf CLK_TCK)
# cpu_ticks PID: the CPU time (user + system, in clock ticks) of every thread of PID so far.
cpu_ticks() {
  cat /proc/"$1"/task/*/stat 2>/dev/null | awk '{ s += $14 + $15 } END { print s + 0 }'
}

# run N KIND: one fresh server of KIND (ref | gw), warmed, measured; prints "KIND req/s p50 p99"
# (milliseconds), then p75, p90 and the share of its core the server used during the run.
run() {
  local n=$1 kind=$2 p out c0 c1
  if [ "$kind" = ref ]; then
    COGNIGY_WEBHOOK_SECRET=$SECRET taskset -c 0 target/release/examples/bare_baseline \
      "127.0.0.1:$GW_PORT" "$REF" "$work/durable-$n.log" 2>/dev/null &
    p=$!
    pids+=("$p")
    wait_port "$GW_PORT"
  else
    gateway_toml "$n"
    start_gateway "$n" "$BIN"
    p=$gw
  fi
  taskset -c 1 wrk -t1 -c64 -d"$WARM" -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- warm >/dev/null
  c0=$(cpu_ticks "$p")
  out=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" --latency -s "$work/req.lua" \
    "http://127.0.0.1:$GW_PORT$ROUTE" -- "run$n")
  c1=$(cpu_ticks "$p")
  kill -TERM "$p"
  wait "$p" 2>/dev/null || true
  rm -rf "$work/data-$n" "$work/durable-$n.log" "$work/audit-$n.jsonl"
  python3 - "$kind" "$out" "$((c1 - c0))" "$tick" <<'PY'
import re, sys
kind, out, ticks, tick = sys.argv[1:]
def ms(label):
    n, unit = re.search(r"\s%s\s+([\d.]+)(\w+)" % label, out).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if non2xx:
    sys.exit(f"{kind}: {non2xx.group(1)} answers were not 2xx")
secs = float(re.search(r"requests in ([\d.]+)s", out).group(1))
busy = int(ticks) / int(tick) / secs
print(f"{kind} {rps:.0f} {ms('50%'):.2f} {ms('99%'):.2f}  (p75 {ms('75%'):.2f} p90 {ms('90%'):.2f}) "
      f"cpu {100 * busy:.0f}% {1e6 * busy / rps:.1f}us")
PY
}

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $ROUTE; wrk 64 connections, $DURATION after $WARM; sync = full, audit on; reference $REF"
: > "$work/runs"
for i in $(seq 1 "$PAIRS"); do
  run "r$i" ref | tee -a "$work/runs"
  run "g$i" gw | tee -a "$work/runs"
done
run "r$((PAIRS + 1))" ref | tee -a "$work/runs"

python3 - "$work/runs" <<'PY'
import statistics, sys
runs = [line.split() for line in open(sys.argv[1])]
print(f"{'gateway run':>12} {'req/s':>9} {'vs references':>14} {'p99 vs references':>18}")
ratios, p99s = [], []
for i in range(1, len(runs) - 1, 2):
    before, gw, after = runs[i - 1], runs[i], runs[i + 1]
    ref_rps = (float(before[1]) + float(after[1])) / 2
    ref_p99 = (float(before[3]) + float(after[3])) / 2
    ratios.append(float(gw[1]) / ref_rps)
    p99s.append(float(gw[3]) / ref_p99)
    print(f"{i // 2 + 1:>12} {gw[1]:>9} {ratios[-1]:>13.2f}x {p99s[-1]:>17.2f}x")
print(f"{'median':>12} {'':>9} {statistics.median(ratios):>13.2f}x {statistics.median(p99s):>17.2f}x")
# One slow reference run (its p99 is the first to show the host's hiccups) weighs on the two
# ratios next to it; the medians of all runs of each kind weigh it less.
refs = [r for r in runs if r[0] == "ref"]
gws = [r for r in runs if r[0] == "gw"]
med = lambda rows, k: statistics.median(float(r[k]) for r in rows)
print(f"medians of all runs: references {med(refs, 1):.0f} req/s, p99 {med(refs, 3):.2f} ms; "
      f"gateway {med(gws, 1):.0f} req/s ({med(gws, 1) / med(refs, 1):.2f}x), "
      f"p99 {med(gws, 3):.2f} ms ({med(gws, 3) / med(refs, 3):.2f}x)")
# A reference that used less than all of its core was waiting for the disk, not for the CPU:
# its req/s is then the disk's, and the ratio says less about the gateway's work per request.
busy = lambda rows: statistics.median(float(r[-2].rstrip("%")) for r in rows)
cost = lambda rows: statistics.median(float(r[-1].rstrip("us")) for r in rows)
print(f"CPU (medians): references {busy(refs):.0f} % of the core, {cost(refs):.1f} µs a request; "
      f"gateway {busy(gws):.0f} %, {cost(gws):.1f} µs ({cost(gws) / cost(refs):.2f}x)")
PY
