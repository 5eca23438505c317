#!/usr/bin/env bash
# Benchmark: visitor latency while the node's model is swapped back and forth.
# Starts a controller and one enrolled edge node (release builds), publishes
# version 1.1.0 of the default bundle, then runs edge-loadgen twice: without
# swaps, and while a model_update / model_rollback pair is sent every
# SWAP_EVERY seconds. Prints both loadgen reports and how many swaps ran.
# Usage: scripts/bench_swap.sh [SESSIONS] [RATE] [SECONDS]   (after provision.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. build/env.sh
SESSIONS=${1:-200} RATE=${2:-5} SECS=${3:-20} SWAP_EVERY=${SWAP_EVERY:-2}
cargo build --release --locked -p edge-node -p cloud-controller -p edgedesk-sim >/dev/null
BIN=$CARGO_TARGET_DIR/release
W=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM
# Controller settings go to the controller only (the node reads EDGEDESK_* too).
ctl_env=(EDGEDESK_CC_STORE__DATA_DIR="$W/ctl" EDGEDESK_CC_HTTP__LISTEN=127.0.0.1:8795
  EDGEDESK_CC_MQTT__LISTEN=127.0.0.1:18835 EDGEDESK_CC_MODELS__QUIC_LISTEN=127.0.0.1:8796
  EDGEDESK_CC_LOG__LEVEL=warn)
env "${ctl_env[@]}" "$BIN/cloud-controller" serve >"$W/ctl.log" 2>&1 & pids+=($!)
# The controller serves HTTPS with its own CA (made at first start).
export EDGEDESK_CC_URL=https://127.0.0.1:8795 EDGEDESK_CC_CA_FILE="$W/ctl/mqtt-ca.pem"
for _ in $(seq 100); do [ -s "$W/ctl/admin-token" ] && (exec 3<>/dev/tcp/127.0.0.1/8795) 2>/dev/null && break; sleep 0.1; done
export EDGEDESK_ADMIN_TOKEN; EDGEDESK_ADMIN_TOKEN=$(cat "$W/ctl/admin-token")
python3 scripts/bench_bundle.py 0 "$W/b110" 1.1.0 >/dev/null
env "${ctl_env[@]}" "$BIN/cloud-controller" model publish "$W/b110" >/dev/null
# The join string carries the URL, the one-time token and the CA's fingerprint.
join=$("$BIN/cloud-controller" token create --node bench-1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["join"])')
EDGEDESK_CLOUD__ENABLED=true EDGEDESK_CLOUD__NODE_ID=bench-1 EDGEDESK_CLOUD__JOIN="$join" \
EDGEDESK_CLOUD__IDENTITY_PATH="$W/node/identity.json" \
EDGEDESK_SERVER__RATE_LIMIT_PER_SEC=1000.0 EDGEDESK_SERVER__RATE_LIMIT_BURST=1000 EDGEDESK_LOG__LEVEL=warn \
EDGEDESK_SERVER__MAX_CONNECTIONS_PER_ADDRESS=20000 EDGEDESK_SERVER__HELLOS_PER_MINUTE_PER_ADDRESS=1000000 \
  "$BIN/edge-node" serve --listen 127.0.0.1:8097 --db "$W/node/edge.db" >"$W/node.log" 2>&1 & pids+=($!)
for _ in $(seq 300); do curl -sf http://127.0.0.1:8097/readyz >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:8097/readyz >/dev/null || { echo "edge node did not start:"; cat "$W/node.log"; exit 1; }
args=$("$BIN/cloud-controller" model show 1.1.0 | python3 -c 'import json,sys; print(json.dumps({"rollout":"bench","release":json.load(sys.stdin)["signed"]}))')
echo "== no swaps"
"$BIN/edge-loadgen" --url ws://127.0.0.1:8097/ws --sessions "$SESSIONS" --rate "$RATE" --duration "$SECS"
echo "== a model_update + model_rollback pair every ${SWAP_EVERY}s"
(
  end=$((SECONDS + SECS + 5)); n=0
  while [ $SECONDS -lt $end ]; do
    "$BIN/cloud-controller" nodes command bench-1 model_update --args "$args" >/dev/null
    sleep "$SWAP_EVERY"
    "$BIN/cloud-controller" nodes command bench-1 model_rollback --args '{"rollout":"bench"}' >/dev/null
    sleep "$SWAP_EVERY"; n=$((n + 2))
  done
  echo "$n" >"$W/swaps"
) &
swapper=$!
"$BIN/edge-loadgen" --url ws://127.0.0.1:8097/ws --sessions "$SESSIONS" --rate "$RATE" --duration "$SECS"
wait "$swapper"
echo "swap commands sent: $(cat "$W/swaps")"
curl -s http://127.0.0.1:8097/metrics | grep -E '^edgedesk_model_changes_total' || true
