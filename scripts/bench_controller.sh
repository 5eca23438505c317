#!/usr/bin/env bash
# Benchmarks of the controller (release builds): one fresh controller per row,
# the fleet simulator against it on the same machine.
# Usage: scripts/bench_controller.sh [--bin DIR] ROW...
#   fleet[:SECONDS]   2,000 nodes, heartbeat every 10 s, 500 summaries/s
#   chat[:SECONDS]    50 agents, 50 branches x 10 chats, a line each way every 2 s
#   fetch             one node fetches a 100 MB bundle over QUIC (3 runs)
# --bin runs another build's controller and fleet-sim (e.g. an older commit).
set -euo pipefail
cd "$(dirname "$0")/.."
. build/env.sh
BIN=$CARGO_TARGET_DIR/release
if [ "${1:-}" = --bin ]; then BIN=$2; shift 2; else
  cargo build --release --locked -p cloud-controller -p edgedesk-sim >/dev/null; fi
W=$(mktemp -d)
cc=""
cleanup() { [ -n "$cc" ] && kill -TERM "$cc" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM
start() {
  rm -rf "$W/cc" && mkdir -p "$W/cc"
  export EDGEDESK_CC_STORE__DATA_DIR="$W/cc" EDGEDESK_CC_HTTP__LISTEN=127.0.0.1:8790 \
    EDGEDESK_CC_MQTT__LISTEN=127.0.0.1:18830 EDGEDESK_CC_MODELS__QUIC_LISTEN=127.0.0.1:8791 \
    EDGEDESK_CC_LOG__LEVEL=warn
  "$BIN/cloud-controller" serve >"$W/cc.log" 2>&1 & cc=$!
  for _ in $(seq 100); do [ -s "$W/cc/admin-token" ] && (exec 3<>/dev/tcp/127.0.0.1/8790) 2>/dev/null && break; sleep 0.1; done
  export EDGEDESK_ADMIN_TOKEN; EDGEDESK_ADMIN_TOKEN=$(cat "$W/cc/admin-token")
  export EDGEDESK_CC_CA_FILE="$W/cc/mqtt-ca.pem" # fleet-sim trusts only the controller's CA
}
stop() { kill -TERM "$cc"; wait "$cc" 2>/dev/null || true; cc=""; }
for row in "$@"; do
  name=${row%%:*}; secs=${row#*:}; [ "$secs" = "$row" ] && secs=60
  case "$name" in
    fleet) start; echo "== fleet: 2000 nodes, ${secs}s"
      "$BIN/fleet-sim" --url https://127.0.0.1:8790 --nodes 2000 --heartbeat 10 --summaries 500 \
        --duration "$secs" --pid "$cc" --prefix fleet || true; stop ;;
    chat) start; echo "== live chat: 50 agents, 500 chats, ${secs}s"
      "$BIN/fleet-sim" --url https://127.0.0.1:8790 --nodes 50 --handoff-agents 50 --chats-per-node 10 \
        --duration "$secs" --line-every 2 --pid "$cc" --prefix hb || true; stop ;;
    fetch) python3 scripts/bench_bundle.py 100 "$W/big" 9.0.0 >/dev/null; start
      EDGEDESK_CC_STORE__DATA_DIR="$W/cc" "$BIN/cloud-controller" model publish "$W/big" >/dev/null
      for i in 1 2 3; do echo "== QUIC fetch, one node, run $i"
        "$BIN/fleet-sim" --url https://127.0.0.1:8790 --fetch 9.0.0 --nodes 1 --pid "$cc" --prefix "one$i" || true; done
      stop ;;
    *) echo "unknown row $row" >&2; exit 64 ;;
  esac
done
