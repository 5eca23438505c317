#!/usr/bin/env bash
# Build, provision and start one edge node on embedded defaults (no external
# services): the default intent model, SQLite under build/, the kiosk page.
# Ctrl+C stops it gracefully. Extra arguments go to `edge-node serve`,
# e.g. scripts/start.sh --listen 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/provision.sh
. build/env.sh
cargo build --release --locked -p edge-node
exec "$CARGO_TARGET_DIR/release/edge-node" serve "$@"
