#!/usr/bin/env bash
# Train twice from the same data and seed (on a 2,000-row sample, for speed)
# and require byte-identical model.onnx files.
set -euo pipefail
cd "$(dirname "$0")/.."
. build/env.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for run in a b; do
  SOURCE_DATE_EPOCH=$([ $run = a ] && echo 1 || echo 2) \
    "$EDGEDESK_TRAIN_PYTHON" scripts/train_model.py --sample 2000 --out "$tmp/$run" >/dev/null
done
a=$(sha256sum < "$tmp/a/model.onnx" | cut -d' ' -f1)
b=$(sha256sum < "$tmp/b/model.onnx" | cut -d' ' -f1)
if [ "$a" = "$b" ]; then
  echo "reproducible: model.onnx sha256 $a (both runs)"
else
  echo "NOT reproducible: $a != $b" >&2
  exit 1
fi
