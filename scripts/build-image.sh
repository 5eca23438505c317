#!/usr/bin/env bash
# Build EdgeDesk's OCI container image without a container engine, with
# Debian's umoci: a minimal root filesystem (no shell, no package manager)
# holding the two binaries, the ONNX Runtime library, the C and C++ runtime
# libraries they link, the C.UTF-8 locale, CA certificates, licences and a
# non-root user.
#
# Usage: scripts/build-image.sh [--profile release|debug] [--out DIR] [--tag TAG] [--no-build]
#   --profile   cargo profile of the binaries (default release; the test suite
#               uses debug, which it has already built)
#   --out       OCI image layout directory (default build/image/oci)
#   --tag       image tag (default: the workspace version)
#   --no-build  use the binaries already in the cargo target dir
#
# The result is an OCI layout: copy it to a registry or a local store with
# skopeo, e.g. `skopeo copy oci:build/image/oci:0.1.0 docker://registry.example/edgedesk/cloud-controller:0.1.0`
# (charts/README.md). scripts/check_image.sh checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=release; OUT=build/image/oci; TAG=""; BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=${2:?--profile needs release or debug}; shift 2 ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-image: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
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
for b in cloud-controller edge-node; do
  [ -x "$BIN/$b" ] || { echo "build-image: $BIN/$b is missing (drop --no-build)" >&2; exit 1; }
done
ORT_NAME=$(basename "$ORT_DYLIB_PATH")

# --- the root filesystem ----------------------------------------------------
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/edgedesk-image.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/rootfs
# proc, sys and dev: mount points a runtime fills.
mkdir -p "$ROOT"/{usr/local/bin,usr/lib/edgedesk,etc/ssl/certs,var/lib/edgedesk,tmp,usr/share/doc/edgedesk,proc,sys,dev}
for b in cloud-controller edge-node; do
  # Symbols off: the image carries what runs, not what debugs.
  strip --strip-unneeded -o "$ROOT/usr/local/bin/$b" "$BIN/$b"
done
cp "$ORT_DYLIB_PATH" "$ROOT/usr/lib/edgedesk/$ORT_NAME"
ln -s "$ORT_NAME" "$ROOT/usr/lib/edgedesk/libonnxruntime.so"

# Every shared library the binaries and ONNX Runtime load, at the path the
# dynamic loader resolves it to here, and each owning package's copyright.
libs=$( { ldd "$BIN/cloud-controller"; ldd "$BIN/edge-node"; ldd "$ORT_DYLIB_PATH"; } \
  | awk '/=> \//{print $3} /^\t\//{print $1}' | sort -u)
pkgs=()
for lib in $libs; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
  pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$pkg" ] && pkgs+=("$pkg")
done
# ONNX Runtime's text operators construct the C.UTF-8 locale: without its
# data the model's string normaliser fails to load.
[ -d /usr/lib/locale/C.utf8 ] || {
  echo "build-image: /usr/lib/locale/C.utf8 is missing (Debian package libc-bin)" >&2; exit 1; }
mkdir -p "$ROOT/usr/lib/locale"
cp -r /usr/lib/locale/C.utf8 "$ROOT/usr/lib/locale/"
pkgs+=(libc-bin)
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
for pkg in $(printf '%s\n' "${pkgs[@]}" | sort -u); do
  if [ -f "/usr/share/doc/$pkg/copyright" ]; then
    mkdir -p "$ROOT/usr/share/doc/$pkg"
    cp "/usr/share/doc/$pkg/copyright" "$ROOT/usr/share/doc/$pkg/copyright"
  fi
done
cp LICENSE "$ROOT/usr/share/doc/edgedesk/LICENSE"
mkdir -p "$ROOT/usr/share/doc/onnxruntime"
cp "$(dirname "$ORT_DYLIB_PATH")"/{LICENSE,ThirdPartyNotices.txt} "$ROOT/usr/share/doc/onnxruntime/"
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
  --history.created_by "scripts/build-image.sh ($PROFILE)" "$ROOT" /
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
umoci config --image "$OUT:$TAG" --created "$CREATED" --history.created "$CREATED" \
  --author "EdgeDesk" \
  --config.user 10001:10001 \
  --config.entrypoint /usr/local/bin/cloud-controller --config.cmd serve \
  --config.workingdir /var/lib/edgedesk \
  --config.env "ORT_DYLIB_PATH=/usr/lib/edgedesk/$ORT_NAME" \
  --config.env "EDGEDESK_CC_STORE__DATA_DIR=/var/lib/edgedesk" \
  --config.env "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
  --config.env "PATH=/usr/local/bin" \
  --config.exposedports 8700/tcp --config.exposedports 1883/tcp --config.exposedports 8701/udp \
  --config.volume /var/lib/edgedesk \
  --config.stopsignal SIGTERM \
  --config.label "org.opencontainers.image.title=EdgeDesk cloud controller" \
  --config.label "org.opencontainers.image.version=$VERSION" \
  --config.label "org.opencontainers.image.revision=$REVISION" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0"
umoci gc --layout "$OUT"
SIZE=$(du -sh "$OUT" | cut -f1)
log "image $OUT:$TAG ($SIZE, $PROFILE binaries); check it with scripts/check_image.sh $OUT:$TAG"
