#!/usr/bin/env bash
# The main job on embedded defaults (no external services): provision, build,
# then start a cloud controller (embedded MQTT broker, SQLite) and two edge
# nodes enrolled with it, and print their URLs. Ctrl+C stops all three
# gracefully. State lives under build/demo/ and survives restarts.
#
# EDGE_ONLY=1 scripts/start.sh starts a single edge node without a controller.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/provision.sh
. build/env.sh
cargo build --release --locked -p edge-node -p cloud-controller
BIN=$CARGO_TARGET_DIR/release
DEMO=build/demo
mkdir -p "$DEMO"

if [ "${EDGE_ONLY:-0}" = 1 ]; then
  exec "$BIN/edge-node" serve --db "$DEMO/edge-solo.db" "$@"
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; }
trap cleanup EXIT INT TERM

CTL_HTTP=${CTL_HTTP:-127.0.0.1:8700}
EDGEDESK_CC_HTTP__LISTEN="$CTL_HTTP" EDGEDESK_CC_STORE__DATA_DIR="$DEMO/controller" \
  "$BIN/cloud-controller" serve &
pids+=($!)
for _ in $(seq 100); do
  [ -s "$DEMO/controller/admin-token" ] && (exec 3<>"/dev/tcp/${CTL_HTTP%:*}/${CTL_HTTP#*:}") 2>/dev/null && break
  sleep 0.1
done
export EDGEDESK_ADMIN_TOKEN
EDGEDESK_ADMIN_TOKEN=$(cat "$DEMO/controller/admin-token")

export EDGEDESK_CC_URL="https://$CTL_HTTP" EDGEDESK_CC_CA_FILE="$DEMO/controller/mqtt-ca.pem"
JOINS=""
start_edge() { # NAME PORT
  local name=$1 port=$2 join=""
  if [ ! -f "$DEMO/$name/identity.json" ]; then
    # The join string: the controller's URL, a one-time token bound to this
    # node and the CA fingerprint the node checks before it sends the token.
    join=$("$BIN/cloud-controller" token create --node "$name" 2>/dev/null | sed -n 's/.*"join": "\([^"]*\)".*/\1/p')
    JOINS="$JOINS    $name: $join"$'\n'
  fi
  EDGEDESK_CLOUD__ENABLED=true EDGEDESK_CLOUD__NODE_ID="$name" EDGEDESK_CLOUD__JOIN="$join" \
  EDGEDESK_CLOUD__IDENTITY_PATH="$DEMO/$name/identity.json" \
    "$BIN/edge-node" serve --listen "127.0.0.1:$port" --db "$DEMO/$name/edge.db" &
  pids+=($!)
}
start_edge branch-1 8080
start_edge branch-2 8081
sleep 1
cat <<MSG

  EdgeDesk is running.
    kiosk, branch-1:   http://127.0.0.1:8080/
    kiosk, branch-2:   http://127.0.0.1:8081/
    cloud controller:  https://$CTL_HTTP/   (REST API and /console; admin token in $DEMO/controller/admin-token)
      its CA (trust it in the browser, or accept the warning): $DEMO/controller/mqtt-ca.pem
      try: EDGEDESK_ADMIN_TOKEN=\$(cat $DEMO/controller/admin-token) EDGEDESK_CC_URL=https://$CTL_HTTP \\
           EDGEDESK_CC_CA_FILE=$DEMO/controller/mqtt-ca.pem $BIN/cloud-controller nodes list
${JOINS:+  join strings used at first start:
$JOINS}
  Ctrl+C stops everything.
MSG
wait
