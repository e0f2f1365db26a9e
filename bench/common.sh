# Shared by the load scripts (sourced, not run): tools, the release build, a work directory
# whose background processes (pids+=(…)) are stopped on exit, and helpers.

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --bin cognihook --example bare_baseline >&2
else
  # A binary older than a source file may not be the source's: one built from a throwaway
  # change that `git checkout` then took back (the checkout gives the file a new time).
  # Said, not refused: comparing an older build on purpose is what BIN is for.
  for b in target/release/cognihook ${BIN:-}; do
    [ -e "$b" ] || continue
    newer=$(find src Cargo.toml Cargo.lock -newer "$b" -type f 2>/dev/null | head -3 | xargs)
    [ -z "$newer" ] || echo "# note: $b is older than $newer (SKIP_BUILD=1: is it the build you mean?)" >&2
  done
fi

# Which source the run's binaries most likely came from (with the note above when a binary
# is older than the source).
if rev=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- src Cargo.toml Cargo.lock examples 2>/dev/null || rev="$rev with uncommitted changes"
  echo "# source tree: $rev" >&2
fi

# Whether this VM hands free memory back to its host (virtio-balloon free page reporting):
# then a page the guest touches for the first time since (a file growing in the page cache,
# memory an allocator gave back) costs a fault in the host, ~8 µs per 4 KiB page on the
# Firecracker host measured in bench/README.md (forty-third session), so runs that write
# new pages (the durable reference's growing log, the database's growth) vary with it.
if [ -r /sys/module/page_reporting/parameters/page_reporting_order ]; then
  order=$(cat /sys/module/page_reporting/parameters/page_reporting_order)
  reported=$(cat /sys/module/page_reporting/parameters/reported_kib 2>/dev/null || echo "?")
  # An order past the allocator's largest block (10 here) reports nothing: reporting is off.
  state=on
  [ "$order" -le 10 ] 2>/dev/null || state="off (order past the largest block)"
  echo "# memory: free page reporting $state (blocks of order $order; $reported KiB reported since boot)" >&2
fi

work=$(mktemp -d)
pids=()
# The page-reporting order to put back on exit (STEADY_MEMORY=1, below).
steady_order=
# The processes are waited for before their directory goes: one still writing into it (a
# gateway stopping) made `rm` fail with "Directory not empty".
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
  if [ -n "$steady_order" ]; then
    rm -f /dev/shm/cognihook-bench-touch
    echo "$steady_order" > /sys/module/page_reporting/parameters/page_reporting_order
  fi
}
trap cleanup EXIT

# STEADY_MEMORY=1 (root, on such a VM): reporting off while the script runs, and the free
# memory (less 2 GiB, within /dev/shm's room) touched once first, so that no file's growth
# pays the host's fault. With it on, the gateway's CPU per request stepped up by ~3 µs about
# 50 s into a run at full speed (the audit writer, the checkpointer and the projector, whose
# files grow); with it off and memory touched, it did not (bench/README.md, fifty-second
# session). For A/B runs that should not depend on how much of the guest's memory the host
# has taken back. Touching takes a while (~0.5 GB/s for pages the host took back). The order
# is put back on exit.
if [ -n "${STEADY_MEMORY:-}" ]; then
  knob=/sys/module/page_reporting/parameters/page_reporting_order
  [ -w "$knob" ] || { echo "STEADY_MEMORY=1 needs root and $knob" >&2; exit 1; }
  steady_order=$(cat "$knob")
  echo 11 > "$knob"
  free_mib=$(awk '/^MemFree:/ { print int($2 / 1024) - 2048 }' /proc/meminfo)
  shm_mib=$(df -m --output=avail /dev/shm | tail -1 | tr -d ' ')
  [ "$free_mib" -le "$shm_mib" ] || free_mib=$shm_mib
  if [ "$free_mib" -gt 0 ]; then
    dd if=/dev/zero of=/dev/shm/cognihook-bench-touch bs=1M count="$free_mib" status=none
    rm -f /dev/shm/cognihook-bench-touch
  fi
  echo "# memory: reporting off for this run, ${free_mib} MiB touched first (STEADY_MEMORY=1)" >&2
fi

# The ports the scripts' servers take must be free: `wait_port` cannot tell a server left
# over from another run (which would then be measured instead) from the one just started.
for port in 18080 18090 18091 18092; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (a server left from an earlier run?): stop it first" >&2
    exit 1
  fi
done

# wait_port PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2; exit 1
}

# stat_of FIELD: one numeric field of the gateway's /stats (GW_PORT); empty when it is null.
# grep, not a Python interpreter per reading: the scripts poll this, and the client's CPU
# should go to the client.
stat_of() { curl -s "http://127.0.0.1:$GW_PORT/stats" | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }

# wait_drained [SECONDS]: until the gateway's outbox has no pending row (120 s at most).
# Each reading counts the pending rows in the gateway, which costs it CPU in proportion to
# the backlog (about 10 ms at 300k rows), so a large backlog is read every 0.5 s and only
# a small one every 0.05 s. Frequent readings took ~10 % of the drain's core: a build
# measured at 26-27k rows/s with readings through Python every 0.05 s drained at 37-38k
# with these (bench/README.md, forty-fifth session).
wait_drained() {
  local until=$(( $(date +%s) + ${1:-120} )) p
  while [ "$(date +%s)" -lt "$until" ]; do
    p=$(stat_of outbox_pending)
    [ "$p" = 0 ] && return 0
    if [ "${p:-0}" -gt 20000 ]; then sleep 0.5; else sleep 0.05; fi
  done
}

# route_requests ROUTE SESSIONS OUT: a wrk script at OUT sending signed bodies for ROUTE (Cognigy
# NLU events for /webhook/cognigy, the seed rules; flow events for /webhook), SESSIONS sessions
# taking turns; signed with SECRET.
route_requests() {
  local kind=nlu
  [ "$1" = /webhook ] && kind=flow-event
  python3 bench/gen_requests.py "$kind" "$1" "$SECRET" "$2" "$3"
}

# gateway_toml N [LINES]: the config of a gateway numbered N at $work/c-N.toml: listening on
# GW_PORT, its data directory and audit log its own under $work (data-N, audit-N.jsonl),
# `sync = "full"`, LINES added under [store].
gateway_toml() {
  printf '[server]\nlisten = "127.0.0.1:%s"\n[store]\ndata_dir = "%s/data-%s"\nsync = "full"\n%s\n[audit]\npath = "%s/audit-%s.jsonl"\n' \
    "$GW_PORT" "$work" "$1" "${2:-}" "$work" "$1" > "$work/c-$1.toml"
}

# start_gateway N BIN: BIN serving $work/c-N.toml on CPU 0 (`COGNIHOOK_LOG=warn`, stderr to
# $work/gw.log, GW_ENV's `VAR=value …` set for it), stopped on exit; once this returns it
# listens on GW_PORT and its pid is in `gw`.
start_gateway() {
  # shellcheck disable=SC2086
  env ${GW_ENV:-} COGNIGY_WEBHOOK_SECRET=$SECRET COGNIHOOK_LOG=warn taskset -c 0 "$2" \
    --config "$work/c-$1.toml" serve 2>>"$work/gw.log" &
  gw=$!
  pids+=("$gw")
  wait_port "$GW_PORT"
}

# start_receiver CPU PORT: a sink's receiver (`bare_baseline accept-all`, which answers every
# POST 200) on CPU, listening on 127.0.0.1:PORT once this returns; stopped on exit.
start_receiver() {
  taskset -c "$1" target/release/examples/bare_baseline "127.0.0.1:$2" accept-all 2>/dev/null &
  pids+=($!)
  wait_port "$2"
}

# sink_route_toml PORT: TOML lines that give /webhook one http sink posting to 127.0.0.1:PORT
# (`bare_baseline accept-all` there), appended to a gateway's config by SINK=1 runs.
sink_route_toml() {
  printf '[sink.backend]\nkind = "http"\nurl = "http://127.0.0.1:%s/events"\nconcurrency = 32\n[[route]]\nname = "flow-events"\npath = "/webhook"\npayload = "flow-event"\nauth = { scheme = "hmac-sha256", secrets = ["env:COGNIGY_WEBHOOK_SECRET"] }\nsinks = ["backend"]\n' "$1"
}
