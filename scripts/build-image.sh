#!/usr/bin/env bash
# Build EdgeDesk's OCI container images without a container engine, with
# Debian's umoci: minimal root filesystems (no shell, no package manager),
# user 10001, licences, the C.UTF-8 locale and every shared library their
# programs load.
#   controller (default): the two binaries, the ONNX Runtime library, CA
#               certificates; entrypoint `cloud-controller serve`.
#   trainer:    the learning loop's trainer for Kubernetes Jobs: Python with
#               the pinned training toolchain (the provisioned venv), the
#               scripts, the base data and the sentence encoder under
#               /opt/edgedesk; entrypoint `python3 .../train_model.py`.
#
# Usage: scripts/build-image.sh [--kind controller|trainer] [--profile release|debug]
#                               [--out DIR] [--tag TAG] [--no-build]
#   --kind      which image (default controller)
#   --profile   cargo profile of the binaries (default release; the test suite
#               uses debug, which it has already built)
#   --out       OCI image layout directory (default build/image/oci, or
#               build/image/trainer for the trainer)
#   --tag       image tag (default: the workspace version)
#   --no-build  use the binaries already in the cargo target dir
#
# The result is an OCI layout: copy it to a registry or a local store with
# skopeo, e.g. `skopeo copy oci:build/image/oci:0.1.0 docker://registry.example/edgedesk/cloud-controller:0.1.0`
# (charts/README.md). scripts/check_image.sh checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=controller; PROFILE=release; OUT=""; TAG=""; BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kind) KIND=${2:?--kind needs controller or trainer}; shift 2 ;;
    --profile) PROFILE=${2:?--profile needs release or debug}; shift 2 ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "build-image: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
case "$KIND" in
  controller) OUT=${OUT:-build/image/oci} ;;
  trainer) OUT=${OUT:-build/image/trainer}; BUILD=0 ;;
  *) echo "build-image: --kind must be controller or trainer, not $KIND" >&2; exit 64 ;;
esac
case "$PROFILE" in
  release) CARGO_PROFILE=(--release); DIR=release ;;
  debug) CARGO_PROFILE=(); DIR=debug ;;
  *) echo "build-image: --profile must be release or debug, not $PROFILE" >&2; exit 64 ;;
esac
log() { printf '\033[1mbuild-image:\033[0m %s\n' "$*" >&2; }

[ -f build/env.sh ] || ./scripts/provision.sh
. build/env.sh
if ! command -v umoci >/dev/null 2>&1; then
  log "installing umoci (Debian)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq umoci >/dev/null
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] || {
  echo "build-image: /etc/ssl/certs/ca-certificates.crt is missing (Debian package ca-certificates)" >&2; exit 1; }

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TAG=${TAG:-$VERSION}
if [ "$BUILD" = 1 ]; then
  log "building cloud-controller and edge-node ($PROFILE)"
  cargo build --locked "${CARGO_PROFILE[@]}" -p cloud-controller -p edge-node
fi
BIN=$CARGO_TARGET_DIR/$DIR
if [ "$KIND" = controller ]; then
  for b in cloud-controller edge-node; do
    [ -x "$BIN/$b" ] || { echo "build-image: $BIN/$b is missing (drop --no-build)" >&2; exit 1; }
  done
fi
ORT_NAME=$(basename "$ORT_DYLIB_PATH")

# --- the root filesystem ----------------------------------------------------
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/edgedesk-image.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/rootfs
# proc, sys and dev: mount points a runtime fills.
mkdir -p "$ROOT"/{usr/local/bin,etc/ssl/certs,var/lib/edgedesk,tmp,usr/share/doc/edgedesk,proc,sys,dev}
pkgs=()
# Every shared library the ELF files given load, at the path the dynamic
# loader resolves it to here (those under $SKIP excepted), and each owning
# package's copyright.
copy_libs() {
  local lib pkg
  for lib in $(for f in "$@"; do ldd "$f" 2>/dev/null; done \
      | awk '/=> \//{print $3} /^\t\//{print $1}' | sort -u); do
    case "$lib" in "${SKIP:-/nonexistent}"/*) continue ;; esac
    [ -e "$ROOT$lib" ] && continue
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
    pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -1 | cut -d: -f1) || true
    if [ -n "$pkg" ]; then pkgs+=("$pkg"); fi
  done
}

if [ "$KIND" = controller ]; then
  mkdir -p "$ROOT/usr/lib/edgedesk"
  for b in cloud-controller edge-node; do
    # Symbols off: the image carries what runs, not what debugs.
    strip --strip-unneeded -o "$ROOT/usr/local/bin/$b" "$BIN/$b"
  done
  cp "$ORT_DYLIB_PATH" "$ROOT/usr/lib/edgedesk/$ORT_NAME"
  ln -s "$ORT_NAME" "$ROOT/usr/lib/edgedesk/libonnxruntime.so"
  copy_libs "$BIN/cloud-controller" "$BIN/edge-node" "$ORT_DYLIB_PATH"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
  mkdir -p "$ROOT/usr/share/doc/onnxruntime"
  cp "$(dirname "$ORT_DYLIB_PATH")"/{LICENSE,ThirdPartyNotices.txt} "$ROOT/usr/share/doc/onnxruntime/"
else
  # Python as provisioned for training: its interpreter and standard library
  # (from the venv's base installation) and the venv's packages, relocated to
  # /usr/local (Python finds its prefix from where its executable is).
  PY=${EDGEDESK_TRAIN_PYTHON:?build/env.sh sets EDGEDESK_TRAIN_PYTHON}
  read -r BASE PYVER VENV_SITE < <("$PY" -c 'import sys, sysconfig; print(sys.base_prefix, "python%d.%d" % sys.version_info[:2], sysconfig.get_paths()["purelib"])')
  [ -d build/models/e5 ] || { echo "build-image: build/models/e5 is missing (scripts/provision.sh)" >&2; exit 1; }
  log "trainer: $PYVER from $BASE with the training venv's packages"
  cp "$(readlink -f "$PY")" "$ROOT/usr/local/bin/$PYVER"
  ln -s "$PYVER" "$ROOT/usr/local/bin/python3"
  mkdir -p "$ROOT/usr/local/lib/$PYVER"
  tar -C "$BASE/lib/$PYVER" -cf - --exclude=./site-packages --exclude=./test --exclude=./idlelib \
      --exclude=./tkinter --exclude=./turtledemo --exclude=./ensurepip --exclude=./lib2to3 . \
    | tar -C "$ROOT/usr/local/lib/$PYVER" -xf -
  # Not pip, nor JAX (scripts/e5_finetune.py's, 380 MB; provisioning tunes the
  # encoder and the image carries the result in models/e5).
  tar -C "$VENV_SITE" -cf - --exclude=./pip --exclude='./pip-*' --exclude=./jax --exclude='./jax-*' \
      --exclude=./jaxlib --exclude='./jaxlib-*' --exclude=./opt_einsum --exclude='./opt_einsum-*' . \
    | tar -C "$ROOT/usr/local/lib/$PYVER" --transform 's,^\.,./site-packages,' -xf -
  # Libraries already in the root (Python packages' own) stay where they are.
  SKIP=$ROOT copy_libs "$(readlink -f "$PY")" \
    $(find "$ROOT/usr/local/lib/$PYVER" -name '*.so*' -type f)
  mkdir -p "$ROOT/opt/edgedesk/scripts" "$ROOT/opt/edgedesk/models"
  cp scripts/*.py scripts/requirements-train.txt "$ROOT/opt/edgedesk/scripts/"
  cp -r data "$ROOT/opt/edgedesk/data"
  cp -r build/models/e5 "$ROOT/opt/edgedesk/models/e5"
fi
# ONNX Runtime's text operators construct the C.UTF-8 locale: without its
# data the model's string normaliser fails to load.
[ -d /usr/lib/locale/C.utf8 ] || {
  echo "build-image: /usr/lib/locale/C.utf8 is missing (Debian package libc-bin)" >&2; exit 1; }
mkdir -p "$ROOT/usr/lib/locale"
cp -r /usr/lib/locale/C.utf8 "$ROOT/usr/lib/locale/"
pkgs+=(libc-bin)
for pkg in $(printf '%s\n' "${pkgs[@]}" | sort -u); do
  if [ -f "/usr/share/doc/$pkg/copyright" ]; then
    mkdir -p "$ROOT/usr/share/doc/$pkg"
    cp "/usr/share/doc/$pkg/copyright" "$ROOT/usr/share/doc/$pkg/copyright"
  fi
done
cp LICENSE "$ROOT/usr/share/doc/edgedesk/LICENSE"
cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
edgedesk:x:10001:10001:EdgeDesk:/var/lib/edgedesk:/usr/sbin/nologin
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
edgedesk:x:10001:
EOF
printf 'hosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
chmod 1777 "$ROOT/tmp"
chmod 0750 "$ROOT/var/lib/edgedesk"
if [ "$(id -u)" = 0 ]; then
  chown -R 0:0 "$ROOT"
  chown 10001:10001 "$ROOT/var/lib/edgedesk"
  ROOTLESS=()
else
  log "not root: files in the image are owned by root, /var/lib/edgedesk too (mount a volume there)"
  ROOTLESS=(--rootless)
fi
# Reproducible timestamps: the last commit's time.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
find "$ROOT" -exec touch -h -d "@$EPOCH" {} +
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)

# --- the image ---------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
umoci init --layout "$OUT"
umoci new --image "$OUT:$TAG"
umoci insert "${ROOTLESS[@]}" --image "$OUT:$TAG" --history.created "$CREATED" \
  --history.created_by "scripts/build-image.sh --kind $KIND" "$ROOT" /
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
COMMON=(--created "$CREATED" --history.created "$CREATED" --author "EdgeDesk"
  --config.user 10001:10001
  --config.env "PATH=/usr/local/bin"
  --config.label "org.opencontainers.image.version=$VERSION"
  --config.label "org.opencontainers.image.revision=$REVISION"
  --config.label "org.opencontainers.image.licenses=Apache-2.0")
if [ "$KIND" = controller ]; then
  umoci config --image "$OUT:$TAG" "${COMMON[@]}" \
    --config.entrypoint /usr/local/bin/cloud-controller --config.cmd serve \
    --config.workingdir /var/lib/edgedesk \
    --config.env "ORT_DYLIB_PATH=/usr/lib/edgedesk/$ORT_NAME" \
    --config.env "EDGEDESK_CC_STORE__DATA_DIR=/var/lib/edgedesk" \
    --config.env "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --config.exposedports 8700/tcp --config.exposedports 1883/tcp --config.exposedports 8701/udp \
    --config.volume /var/lib/edgedesk \
    --config.stopsignal SIGTERM \
    --config.label "org.opencontainers.image.title=EdgeDesk cloud controller"
else
  umoci config --image "$OUT:$TAG" "${COMMON[@]}" \
    --config.entrypoint /usr/local/bin/python3 \
    --config.entrypoint /opt/edgedesk/scripts/train_model.py \
    --config.cmd=--help \
    --config.workingdir /opt/edgedesk \
    --config.env "HOME=/tmp" \
    --config.env "PYTHONDONTWRITEBYTECODE=1" \
    --config.label "org.opencontainers.image.title=EdgeDesk trainer"
fi
umoci gc --layout "$OUT"
SIZE=$(du -sh "$OUT" | cut -f1)
log "$KIND image $OUT:$TAG ($SIZE); check it with scripts/check_image.sh --kind $KIND $OUT:$TAG"
