#!/usr/bin/env bash
# Benchmark: the edge node end to end (NLU, SQLite commit with synchronous=FULL,
# reply) under edge-loadgen, one row per load. Starts a fresh node (release
# build) for each row and prints the loadgen report.
# Usage: scripts/bench_edge.sh [--bin DIR] [--bundle DIR] [--texts CSV] [--mode open|closed] SESSIONSxRATE[xSECONDS] ...
#   e.g. scripts/bench_edge.sh 1000x1 200x40 400x40x15
# --bin runs other binaries (e.g. an older build) with this checkout's loadgen;
# --bundle serves another model than the configured one (e.g. the linear
# build/models/default; rows in docs/BENCHMARKS.md name theirs); --texts
# sends the `text` column of a CSV (e.g. build/models/validation.csv) instead
# of the load generator's twelve built-in questions.
set -euo pipefail
cd "$(dirname "$0")/.."
. build/env.sh
BIN=$CARGO_TARGET_DIR/release MODE=open BUNDLE= TEXTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --bundle) BUNDLE=$(realpath "$2"); shift 2 ;;
    --texts) TEXTS=(--texts "$(realpath "$2")"); shift 2 ;;
    *) break ;;
  esac
done
# Settings from the environment are TOML values: a path is a quoted string.
[ -n "$BUNDLE" ] && export EDGEDESK_NLU__BUNDLE="\"$BUNDLE\""
cargo build --release --locked -p edge-node -p edgedesk-sim >/dev/null
LOADGEN=$CARGO_TARGET_DIR/release/edge-loadgen
W=$(mktemp -d)
node=""
cleanup() { [ -n "$node" ] && kill -TERM "$node" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM
for row in "$@"; do
  IFS=x read -r sessions rate secs <<<"$row"
  secs=${secs:-20}
  rm -rf "$W/node" && mkdir -p "$W/node"
  EDGEDESK_SERVER__RATE_LIMIT_PER_SEC=1000.0 EDGEDESK_SERVER__RATE_LIMIT_BURST=1000 \
  EDGEDESK_SERVER__MAX_CONNECTIONS=20000 EDGEDESK_LOG__LEVEL=warn \
  EDGEDESK_SERVER__MAX_CONNECTIONS_PER_ADDRESS=20000 EDGEDESK_SERVER__HELLOS_PER_MINUTE_PER_ADDRESS=1000000 \
    "$BIN/edge-node" serve --listen 127.0.0.1:8090 --db "$W/node/edge.db" >"$W/node.log" 2>&1 &
  node=$!
  for _ in $(seq 300); do curl -sf http://127.0.0.1:8090/readyz >/dev/null && break; sleep 0.1; done
  echo "== $sessions sessions x $rate msg/s for ${secs}s ($MODE loop)"
  "$LOADGEN" --mode "$MODE" --url ws://127.0.0.1:8090/ws --sessions "$sessions" --rate "$rate" \
    --duration "$secs" --warmup 3 --pid "$node" --connect-concurrency 256 \
    --metrics http://127.0.0.1:8090/metrics "${TEXTS[@]}" || true
  kill -TERM "$node"; wait "$node" 2>/dev/null || true; node=""
done
