#!/usr/bin/env bash
# Check the OCI image scripts/build-image.sh made, as a container runtime
# would see it: the image configuration (user, entrypoint, environment,
# ports, volume), the root filesystem's layout, and the entrypoint run in it
# (chroot as the image's user): --version, `model publish -` of a real bundle
# as a tar stream, then `serve` until /healthz answers, `admin-token` and a
# client command against it, and a clean exit on SIGTERM.
#
# Usage: scripts/check_image.sh [LAYOUT:TAG]   (default build/image/oci:<workspace version>)
# Needs root (chroot), or unprivileged user namespaces (unshare -r).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=${1:-build/image/oci:$VERSION}
LAYOUT=${IMAGE%:*}; TAG=${IMAGE##*:}
fail() { echo "check-image: FAIL: $*" >&2; exit 1; }
ok() { echo "check-image: ok: $*"; }
[ -f "$LAYOUT/index.json" ] || fail "$LAYOUT is not an OCI layout (build it with scripts/build-image.sh)"
[ -f build/models/default/manifest.json ] || fail "build/models/default is missing (scripts/provision.sh)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgedesk-check-image.XXXXXX")
SERVE_PID=""
PROC_MOUNTED=""
cleanup() {
  [ -n "$SERVE_PID" ] && kill -9 "$SERVE_PID" 2>/dev/null || true
  [ -n "$PROC_MOUNTED" ] && umount "$PROC_MOUNTED" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. the image configuration ----------------------------------------------
python3 - "$LAYOUT" "$TAG" "$WORK/env" "$WORK/argv" <<'PY' || fail "image configuration"
import json, os, sys
layout, tag, env_out, argv_out = sys.argv[1:]
def blob(digest):
    algo, hexd = digest.split(":")
    return json.load(open(os.path.join(layout, "blobs", algo, hexd)))
index = json.load(open(os.path.join(layout, "index.json")))
refs = [m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
assert len(refs) == 1, f"tag {tag}: {len(refs)} manifests"
manifest = blob(refs[0]["digest"])
config = blob(manifest["config"]["digest"])
c = config["config"]
problems = []
def want(what, got, expected):
    if got != expected:
        problems.append(f"{what}: {got!r}, expected {expected!r}")
want("os", config.get("os"), "linux")
want("user", c.get("User"), "10001:10001")
want("entrypoint", c.get("Entrypoint"), ["/usr/local/bin/cloud-controller"])
want("cmd", c.get("Cmd"), ["serve"])
want("volumes", sorted(c.get("Volumes", {})), ["/var/lib/edgedesk"])
want("exposed ports", sorted(c.get("ExposedPorts", {})), ["1883/tcp", "8700/tcp", "8701/udp"])
env = dict(e.split("=", 1) for e in c.get("Env", []))
want("ORT_DYLIB_PATH", env.get("ORT_DYLIB_PATH", "").startswith("/usr/lib/edgedesk/libonnxruntime.so."), True)
want("data dir", env.get("EDGEDESK_CC_STORE__DATA_DIR"), "/var/lib/edgedesk")
want("layers", len(manifest["layers"]), 1)
if problems:
    sys.exit("\n".join(problems))
with open(env_out, "w") as f:
    f.write("\n".join(c["Env"]) + "\n")
with open(argv_out, "w") as f:
    f.write(" ".join(c["Entrypoint"] + c["Cmd"]) + "\n")
size = sum(l["size"] for l in manifest["layers"])
print(f"check-image: ok: configuration (user 10001, entrypoint cloud-controller serve, "
      f"{len(env)} env vars, one layer of {size / 2**20:.1f} MiB compressed)")
PY

# --- 2. the root filesystem --------------------------------------------------
R=$WORK/bundle/rootfs
if [ "$(id -u)" = 0 ]; then
  umoci unpack --image "$IMAGE" "$WORK/bundle" >/dev/null
  CHROOT=("$(command -v chroot)" --userspec=10001:10001 "$R")
else
  umoci unpack --rootless --image "$IMAGE" "$WORK/bundle" >/dev/null
  CHROOT=("$(command -v unshare)" -r "$(command -v chroot)" "$R")
fi
# A command in the image, with only the image's environment.
run_in() { env -i $(cat "$WORK/env") "${CHROOT[@]}" "$@"; }
for f in usr/local/bin/cloud-controller usr/local/bin/edge-node usr/lib/edgedesk/libonnxruntime.so \
         etc/ssl/certs/ca-certificates.crt usr/share/doc/edgedesk/LICENSE \
         usr/share/doc/onnxruntime/LICENSE usr/share/doc/onnxruntime/ThirdPartyNotices.txt; do
  [ -e "$R/$f" ] || fail "/$f is missing"
done
grep -q '^edgedesk:x:10001:10001:' "$R/etc/passwd" || fail "no user edgedesk (10001) in /etc/passwd"
for f in bin/sh usr/bin/sh bin/bash usr/bin/apt usr/bin/dpkg; do
  [ ! -e "$R/$f" ] || fail "/$f is in the image: it should hold no shell or package manager"
done
files=$(find "$R" -type f | wc -l)
[ "$files" -lt 200 ] || fail "$files files: the root filesystem is not minimal"
if [ "$(id -u)" = 0 ]; then
  [ "$(stat -c %u "$R/var/lib/edgedesk")" = 10001 ] || fail "/var/lib/edgedesk is not owned by 10001"
fi
ok "layout ($files files, $(du -sh "$R" | cut -f1) unpacked; binaries, ONNX Runtime, CA certificates, licences; no shell)"

# --- 3. the entrypoint -------------------------------------------------------
# /proc, as a runtime mounts it (ONNX Runtime reads /proc/cpuinfo).
if mount -t proc proc "$R/proc" 2>/dev/null; then
  PROC_MOUNTED=$R/proc
else
  echo "check-image: note: could not mount /proc in the chroot; running without it" >&2
fi
out=$(run_in /usr/local/bin/cloud-controller --version) || fail "cloud-controller --version"
[ "$out" = "cloud-controller $VERSION" ] || fail "cloud-controller --version printed '$out'"
out=$(run_in /usr/local/bin/edge-node --version) || fail "edge-node --version"
[ "$out" = "edge-node $VERSION" ] || fail "edge-node --version printed '$out'"
# The node reads its own settings, not the controller's EDGEDESK_CC_ ones the image sets.
run_in /usr/local/bin/edge-node config check >/dev/null || fail "edge-node config check in the image's environment"
ok "cloud-controller and edge-node run as user 10001"

# As `kubectl exec -i POD -- cloud-controller model publish -` does it: the
# image has no tar, so the bundle arrives as a tar stream on stdin.
out=$(tar -C build/models/default -cf - . | run_in /usr/local/bin/cloud-controller model publish -) \
  || fail "model publish - in the image"
model_version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' build/models/default/manifest.json)
grep -q "\"version\": \"$model_version\"" <<<"$out" || fail "model publish printed: $out"
[ -f "$R/var/lib/edgedesk/model-signing.key" ] || fail "model publish made no signing key in /var/lib/edgedesk"
[ -z "$(ls -A "$R/var/lib/edgedesk/incoming")" ] || fail "model publish left the unpacked tar behind"
ok "model publish - (tar on stdin) signed and stored version $model_version (golden set checked in ONNX Runtime)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mqtt=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
quic=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "EDGEDESK_CC_HTTP__LISTEN=127.0.0.1:$port" >> "$WORK/env"
echo "EDGEDESK_CC_MQTT__LISTEN=127.0.0.1:$mqtt" >> "$WORK/env"
echo "EDGEDESK_CC_MODELS__QUIC_LISTEN=127.0.0.1:$quic" >> "$WORK/env"
# The image's own entrypoint and command (env and chroot exec, so $! is the controller).
env -i $(cat "$WORK/env") "${CHROOT[@]}" $(cat "$WORK/argv") > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
deadline=$(( $(date +%s) + 90 ))
until curl -sf --cacert "$R/var/lib/edgedesk/mqtt-ca.pem" "https://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
  kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; fail "serve exited before /healthz answered"; }
  [ "$(date +%s)" -lt "$deadline" ] || { cat "$WORK/serve.log" >&2; fail "/healthz did not answer within 90 s"; }
  sleep 0.2
done
token=$(run_in /usr/local/bin/cloud-controller admin-token) || fail "admin-token in the image"
[ "$token" = "$(cat "$R/var/lib/edgedesk/admin-token")" ] || fail "admin-token printed something else"
out=$(run_in /usr/local/bin/cloud-controller --url "https://127.0.0.1:$port" model list) \
  || { cat "$WORK/serve.log" >&2; fail "model list against the image's controller"; }
grep -q "$model_version" <<<"$out" || fail "model list does not show $model_version: $out"
kill -TERM "$SERVE_PID"
rc=0; wait "$SERVE_PID" || rc=$?
SERVE_PID=""
[ "$rc" = 0 ] || { cat "$WORK/serve.log" >&2; fail "serve exited $rc on SIGTERM"; }
ok "serve answered /healthz over HTTPS, admin-token and model list worked against it, and it exited 0 on SIGTERM"
