#!/usr/bin/env bash
# Run EdgeDesk's whole test suite: provisions what it needs (ONNX Runtime,
# training venv, models incl. the holdout one, Chromium, Node.js, playwright-core),
# then Rust unit + integration tests (the controller's on SQLite and again on
# PostgreSQL), the model reproducibility check, the
# container images (built and checked), and the
# browser end-to-end tests in Debian's Chromium, and a 15-second fuzz smoke run per decoder (longer runs: scripts/fuzz.sh SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/provision.sh --with-holdout --test-peers
. build/env.sh

t0=$(date +%s)
step() { printf '\n\033[1m== %s\033[0m  (%s s into the run)\n' "$*" "$(( $(date +%s) - t0 ))"; }

step "build"
cargo build --workspace --all-targets --locked

step "model reproducibility (same data + seed => same model.onnx)"
scripts/check_reproducible.sh

step "training script's unit tests (the label memory's graph against its numpy form; the confidence threshold; the fused heads)"
"$EDGEDESK_TRAIN_PYTHON" scripts/test_label_memory.py
"$EDGEDESK_TRAIN_PYTHON" scripts/test_thresholds.py
"$EDGEDESK_TRAIN_PYTHON" scripts/test_fusion.py

step "container images (scripts/build-image.sh: the controller with the debug binaries, the trainer; scripts/check_image.sh)"
scripts/build-image.sh --profile debug --no-build --out build/image/oci
scripts/check_image.sh build/image/oci
scripts/build-image.sh --kind trainer --out build/image/trainer
scripts/check_image.sh --kind trainer build/image/trainer

step "browser end-to-end tests (Chromium)"
(cd tests/e2e && EDGE_NODE_BIN="$CARGO_TARGET_DIR/debug/edge-node" CLOUD_CONTROLLER_BIN="$CARGO_TARGET_DIR/debug/cloud-controller" npm test)

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

step "the controller's tests again, against PostgreSQL (a throwaway cluster, scripts/pg-cluster.sh)"
pgdir=$(mktemp -d)
trap 'scripts/pg-cluster.sh stop "$pgdir" || true; rm -rf "$pgdir"' EXIT
pgurl=$(scripts/pg-cluster.sh start "$pgdir")
# Every test that runs a controller, but for those whose store use the
# controller's own tests already cover on PostgreSQL and whose time goes to
# something the store does not change: the node-only ones (chat, bad input,
# CLI, crash), model transfers (models), the 20-node rollouts (rollout; a
# rollout on PostgreSQL is in resilience) and the learning loop's two
# trainings (its other tests stay). About four minutes fewer.
pg_tests='package(cloud-controller) | (package(edgedesk-systest) & !(binary(chat) | binary(bad_input) | binary(cli) | binary(crash) | binary(models) | binary(rollout) | test(labels_become_a_model_the_whole_fleet_serves)))'
if cargo nextest --version >/dev/null 2>&1; then
  EDGEDESK_TEST_POSTGRES="$pgurl" cargo nextest run --workspace --locked --no-fail-fast -E "$pg_tests"
else
  EDGEDESK_TEST_POSTGRES="$pgurl" cargo test --locked --no-fail-fast -p cloud-controller -p edgedesk-systest
fi

step "fuzz smoke (15 s per decoder, scripts/fuzz.sh)"
if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  scripts/fuzz.sh 15
else
  echo "fuzz smoke NOT RUN: needs a nightly toolchain and cargo-fuzz" >&2
fi
step "done"
