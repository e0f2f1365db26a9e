#!/usr/bin/env bash
# Where a gateway's memory is at full speed: one fresh gateway (CPU 0; `sync = "full"`, audit
# on) under wrk (CPU 1, 64 connections) on ROUTE for DURATION. Ten seconds before the end it
# reads, from the running process: RSS split into anonymous and file pages (/proc), its
# threads by name, SQLite's heap (`sqlite3_memory_used()`, called through gdb) and the page
# cache of the connection stepped next (`sqlite3_db_status(…, SQLITE_DBSTATUS_CACHE_USED, …)`
# at the next `sqlite3_step` of any thread, with the connection's `cache_size` and the
# thread's name: at full speed nearly always the projector's). At the end: peak RSS and req/s.
# The bundled SQLite's page caches share one pool (docs/guarantees.md), so one connection
# may hold more than its own `cache_size`. gdb stops the gateway for a moment, so the
# run's req/s and p99 are not for comparing builds (bench/cpu_ab.sh is).
#
# usage: bench/memory.sh
# env:   BIN (default target/release/cognihook), ROUTE (/webhook/cognigy, the seed rules; or
#        /webhook), DURATION (60s), SINK=1 (/webhook with one http sink, as in bench/cpu_ab.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

SECRET=bench-secret
GW_PORT=18080
SINK_PORT=18091
BIN=${BIN:-target/release/cognihook}
ROUTE=${ROUTE:-/webhook/cognigy}
DURATION=${DURATION:-60s}
command -v gdb >/dev/null || { apt-get update -qq && apt-get install -y -qq gdb >/dev/null; }
source bench/common.sh
secs=${DURATION%s}
[ "$secs" -gt 15 ] || { echo "DURATION must be more than 15s (a number of seconds)" >&2; exit 2; }

if [ -n "${SINK:-}" ]; then
  ROUTE=/webhook
  start_receiver 1 "$SINK_PORT"
fi
route_requests "$ROUTE" 1000 "$work/req.lua"
printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\ndata_dir = "%s/data"\nsync = "full"\n[audit]\npath = "%s/audit.jsonl"\n' \
  "$GW_PORT" "$work" "$work" > "$work/c.toml"
[ -z "${SINK:-}" ] || sink_route_toml "$SINK_PORT" >> "$work/c.toml"

COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c 0 "$BIN" --config "$work/c.toml" serve \
  2>>"$work/gw.log" &
gw=$!
pids+=("$gw")
wait_port "$GW_PORT"

# The gdb calls run with the other threads stopped (scheduler-locking): a call that let them
# run could stop in another thread and leave the gateway broken.
cat > "$work/cache.gdb" <<'GDB'
set pagination off
set $out = (int *) malloc(16)
set $stmt = (void **) malloc(8)
break sqlite3_step
commands
silent
set scheduler-locking on
disable 1
set $db = (void *) sqlite3_db_handle($rdi)
set $r = (int) sqlite3_db_status($db, 1, $out, $out + 1, 0)
set $used = $out[0]
set $r = (int) sqlite3_prepare_v2($db, "PRAGMA main.cache_size", -1, $stmt, 0)
set $r = (int) sqlite3_step(*$stmt)
printf "CACHE %d %d\n", $used, (int) sqlite3_column_int(*$stmt, 0)
set $r = (int) sqlite3_finalize(*$stmt)
printf "HEAP %lld\n", (long long) sqlite3_memory_used()
info thread
detach
quit
end
continue
GDB

snapshot() {
  sleep $((secs - 10))
  grep -E '^(VmRSS|RssAnon|RssFile|RssShmem)' "/proc/$gw/status" > "$work/status"
  for t in /proc/"$gw"/task/*; do cat "$t/comm"; done 2>/dev/null | sort | uniq -c > "$work/threads"
  timeout 20 gdb -p "$gw" -batch -x "$work/cache.gdb" > "$work/gdb.out" 2>&1 || true
}
snapshot &
snap=$!
out=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" -s "$work/req.lua" "http://127.0.0.1:$GW_PORT$ROUTE" -- run)
wait "$snap"
peak=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$gw/status")
rps=$(sed -n 's/^Requests\/sec: *//p' <<<"$out")

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $BIN; $ROUTE${SINK:+ + http sink}; wrk 64 connections, $DURATION; sync = full"
echo "req/s $rps, peak RSS $peak MiB"
echo "at $((secs - 10)) s:"
awk '{ printf "  %-9s %7.1f MiB\n", $1, $2 / 1024 }' "$work/status"
echo "  threads: $(awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }' "$work/threads")"
awk '/^HEAP/ { printf "  SQLite heap (all connections): %.1f MiB\n", $2 / 1048576 }' "$work/gdb.out"
thread=$(sed -n 's/^\* *[0-9]* *Thread [^"]*"\([^"]*\)".*/\1/p' "$work/gdb.out")
awk -v t="${thread:-?}" '/^CACHE/ { printf "  page cache of the connection stepped by %s: %.1f MiB (cache_size %d)\n", t, $2 / 1048576, $3 }' "$work/gdb.out"
grep -q '^HEAP' "$work/gdb.out" || { echo "  gdb read nothing:"; tail -5 "$work/gdb.out" | sed 's/^/    /'; }
