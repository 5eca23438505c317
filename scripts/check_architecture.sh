#!/usr/bin/env bash
# The layering the workspace promises (ARCHITECTURE.md), checked:
#   - the controller does not link the edge node, and the edge node (tests
#     included) does not pull in the controller;
#   - the dialog engine and the wire types build without tokio (I/O-free by
#     their dependency lists);
#   - no crate has an import cycle between its modules (check_layers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
no_dep() { # no_dep DESCRIPTION PATTERN cargo-tree-args...
  local what=$1 pattern=$2; shift 2
  if cargo tree --locked "$@" --prefix none --format '{p}' 2>/dev/null | grep -q "^$pattern "; then
    echo "check_architecture: $what" >&2
    fail=1
  fi
}
no_dep "cloud-controller links edge-node" edge-node -e normal -p cloud-controller
no_dep "edge-node (with dev-dependencies) pulls in cloud-controller" cloud-controller -p edge-node
no_dep "edgedesk-dialog depends on tokio" tokio -p edgedesk-dialog
no_dep "edgedesk-common depends on tokio" tokio -p edgedesk-common
python3 scripts/check_layers.py || fail=1
[ "$fail" = 0 ] && echo "check_architecture: crate layering and module graph OK"
exit "$fail"
