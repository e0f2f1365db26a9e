#!/usr/bin/env bash
# Instructions per event of the embedded store's whole cycle for one sink: accepted, claimed,
# settled delivered (examples/store_rounds.rs, no HTTP), counted by valgrind's callgrind.
# bench/callgrind.sh measures the request path but cannot run deliveries under valgrind; this
# measures what a delivered event costs the sequencer and the projector.
#
# usage: bench/store_callgrind.sh [ROUNDS]      (default 100 rounds of 64 events)
# env:   BIN (another build of the example to compare), SKIP_BUILD=1, KEEP=DIR (keep the
#        callgrind file there, for callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-100}
BIN=${BIN:-target/release/examples/store_rounds}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --example store_rounds >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$BIN" "$ROUNDS" >"$out/stdout" 2>"$out/vg"
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out/cg" "$KEEP/"
events=$((ROUNDS * 64))
echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $BIN; $(cat "$out/stdout")"
callgrind_annotate --inclusive=yes "$out/cg" 2>/dev/null | python3 bench/callgrind_parts.py event "$events" \
  'sequencer=cognihook::store::sqlite::sequencer::Sequencer::run' \
  'projector=cognihook::store::sqlite::project::run|cognihook::store::sqlite::project::apply_batch'
