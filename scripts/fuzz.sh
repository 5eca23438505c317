#!/usr/bin/env bash
# Fuzz every decoder that takes bytes from outside (see docs/SECURITY.md).
#
#   scripts/fuzz.sh [seconds per target]     default 30 (CI's smoke run, scripts/test.sh, uses 15)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# corpora and any crash inputs stay under fuzz/ (corpora are not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is needed (cargo install cargo-fuzz)" >&2
    exit 2
fi
# Its own target directory: sanitizer builds must not evict the workspace's.
export CARGO_TARGET_DIR="${EDGEDESK_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}-fuzz}"
targets=(kiosk_frame envelope_open release_manifest knowledge_base fetch_request)
status=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    start=$(date +%s)
    if cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2> "fuzz/$t.log"; then
        result=ok
    else
        result="FAILED (see fuzz/$t.log and fuzz/artifacts/$t)"
        status=1
    fi
    runs=$(grep -Eo 'Done [0-9]+ runs' "fuzz/$t.log" | tail -1 || true)
    echo "$t: ${runs:-no run count} in $(( $(date +%s) - start )) s wall: $result"
done
exit $status
