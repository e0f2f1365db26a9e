#!/usr/bin/env bash
# Connection-burst benchmark (issue: hostile traffic): a gateway on one CPU is hit by wrk with
# CONNS connections (default 10,000) for DURATION while a well-behaved client, on the other CPU,
# sends one signed request every 50 ms on a keep-alive connection of its own (as a Cognigy bot
# would). Reports peak RSS, RSS 10 s after the burst, wrk's answers, and the well-behaved
# client's answered share and latency.
#
# usage: bench/burst.sh [DURATION] [CONNS]            (defaults: 20s 10000)
# env:   BIN (gateway binary, default target/release/cognihook), SKIP_BUILD=1, SYNC (store.sync,
#        default full), EXTRA (TOML lines added to [server], e.g. 'max_connections = 2048')
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-20s}
CONNS=${2:-10000}
SYNC=${SYNC:-full}
SECRET=bench-secret
SERVER_CPU=0
CLIENT_CPU=1
GW_PORT=18080
BIN=${BIN:-target/release/cognihook}
source bench/common.sh

ulimit -n "$((CONNS * 2 + 1024))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
python3 bench/gen_requests.py flow-event /webhook "$SECRET" 1000 "$work/flow.lua"

cat > "$work/cognihook.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
${EXTRA:-}
[store]
data_dir = "$work/data"
sync = "$SYNC"
[audit]
path = "$work/audit.jsonl"
TOML
COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c "$SERVER_CPU" \
  "$BIN" --config "$work/cognihook.toml" serve 2>>"$work/gw.log" &
gw_pid=$!
pids+=("$gw_pid")
wait_port "$GW_PORT"
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2/1024 }' "/proc/$gw_pid/status"; }
idle_before=$(rss_mib)

# The well-behaved client: runs for the burst plus 2 s on each side.
secs=${DURATION%s}
taskset -c "$CLIENT_CPU" python3 - "$GW_PORT" "$SECRET" "$((secs + 4))" > "$work/client.txt" <<'PY' &
import hashlib, hmac, http.client, json, sys, time
port, secret, secs = int(sys.argv[1]), sys.argv[2].encode(), float(sys.argv[3])
end = time.monotonic() + secs
lat, failed, i, conn = [], 0, 0, None
while time.monotonic() < end:
    i += 1
    body = json.dumps({"sessionId": f"polite-{i}", "userId": "polite", "message": "hello", "eventType": "flow.execution",
                       "correlationId": f"polite-{i}"}).encode()
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    t0 = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/webhook", body, {"Content-Type": "application/json",
                                                "X-Cognigy-Signature": sig})
        r = conn.getresponse(); r.read()
        if r.status == 200:
            lat.append(time.monotonic() - t0)
        else:
            failed += 1
    except Exception:
        failed += 1
        conn = None
    time.sleep(max(0.0, 0.05 - (time.monotonic() - t0)))
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
print(f"{i} {len(lat)} {failed} {q(0.5):.1f} {q(0.99):.1f} {(lat[-1] * 1000 if lat else float('nan')):.1f}")
PY
client_pid=$!
sleep 2
out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 15s --latency \
  -s "$work/flow.lua" "http://127.0.0.1:$GW_PORT/webhook" -- burst 2>&1 || true)
echo "$out" > "$work/burst.wrk"
peak=$(awk '/VmHWM/ { printf "%.1f", $2/1024 }' "/proc/$gw_pid/status")
wait "$client_pid"
sleep 10
after=$(rss_mib)
committed=$(stat_of events_committed)

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# $BIN, wrk 1 thread $CONNS connections $DURATION, store.sync=$SYNC, server on CPU $SERVER_CPU ${EXTRA:+($EXTRA)}"
python3 - "$work/burst.wrk" "$(cat "$work/client.txt")" "$idle_before" "$peak" "$after" "$committed" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
def find(pat, default="-"):
    m = re.search(pat, t)
    return m.group(1) if m else default
total = find(r"(\d+) requests in")
non2xx = find(r"Non-2xx or 3xx responses: (\d+)", "0")
p50, p99 = find(r"\s50%\s+(\S+)"), find(r"\s99%\s+(\S+)")
rps = find(r"Requests/sec:\s+([\d.]+)")
p50 = ms(p50) if p50 != "-" else "-"
p99 = ms(p99) if p99 != "-" else "-"
errors = find(r"Socket errors: (.*)", "none")
print(f"burst: {total} answers ({non2xx} non-2xx), {rps} req/s, p50 {p50} ms, p99 {p99} ms; "
      f"socket errors: {errors}")
sent, ok, failed, c50, c99, cmax = sys.argv[2].split()
print(f"well-behaved client: {ok} of {sent} answered 200 ({failed} failed or refused), "
      f"p50 {c50} ms, p99 {c99} ms, max {cmax} ms")
print(f"RSS MiB: idle {sys.argv[3]}, peak {sys.argv[4]}, 10 s after the burst {sys.argv[5]}; "
      f"events committed {sys.argv[6]}")
PY
