#!/usr/bin/env bash
# Check an OCI image scripts/build-image.sh made, as a container runtime
# would see it: the image configuration (user, entrypoint, environment,
# ports, volume), the root filesystem's layout, and its programs run in it
# (chroot as the image's user, with only the image's environment).
#   controller: --version, `model publish -` of a real bundle as a tar
#               stream, then `serve` until /healthz answers, `admin-token`
#               and a client command against it, and a clean exit on SIGTERM.
#   trainer:    the training toolchain imports and train_model.py answers;
#               with --train, a whole training run of the default model
#               (about a minute), whose model.onnx must equal the one
#               scripts/provision.sh trained here (same data and seed).
#
# Usage: scripts/check_image.sh [--kind controller|trainer] [--train] [LAYOUT:TAG]
#   (default build/image/oci:<workspace version>, build/image/trainer:<version>)
# Needs root (chroot), or unprivileged user namespaces (unshare -r).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
KIND=controller; TRAIN=0; IMAGE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kind) KIND=${2:?--kind needs controller or trainer}; shift 2 ;;
    --train) TRAIN=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "check-image: unknown option $1 (see --help)" >&2; exit 64 ;;
    *) IMAGE=$1; shift ;;
  esac
done
case "$KIND" in
  controller) IMAGE=${IMAGE:-build/image/oci:$VERSION} ;;
  trainer) IMAGE=${IMAGE:-build/image/trainer:$VERSION} ;;
  *) echo "check-image: --kind must be controller or trainer" >&2; exit 64 ;;
esac
# A layout without a tag means the workspace version's.
[[ "$IMAGE" == *:* ]] || IMAGE=$IMAGE:$VERSION
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
  for m in $PROC_MOUNTED; do umount "$m" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- 1. the image configuration ----------------------------------------------
python3 - "$LAYOUT" "$TAG" "$WORK/env" "$WORK/argv" "$KIND" <<'PY' || fail "image configuration"
import json, os, sys
layout, tag, env_out, argv_out, kind = sys.argv[1:]
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
env = dict(e.split("=", 1) for e in c.get("Env", []))
if kind == "controller":
    want("entrypoint", c.get("Entrypoint"), ["/usr/local/bin/cloud-controller"])
    want("cmd", c.get("Cmd"), ["serve"])
    want("volumes", sorted(c.get("Volumes", {})), ["/var/lib/edgedesk"])
    want("exposed ports", sorted(c.get("ExposedPorts", {})), ["1883/tcp", "8700/tcp", "8701/udp"])
    want("ORT_DYLIB_PATH", env.get("ORT_DYLIB_PATH", "").startswith("/usr/lib/edgedesk/libonnxruntime.so."), True)
    want("data dir", env.get("EDGEDESK_CC_STORE__DATA_DIR"), "/var/lib/edgedesk")
else:
    # The chart's training.command runs the same script by PATH.
    want("entrypoint", c.get("Entrypoint"), ["/usr/local/bin/python3", "/opt/edgedesk/scripts/train_model.py"])
    want("PATH", env.get("PATH"), "/usr/local/bin")
want("layers", len(manifest["layers"]), 1)
if problems:
    sys.exit("\n".join(problems))
with open(env_out, "w") as f:
    f.write("\n".join(c["Env"]) + "\n")
with open(argv_out, "w") as f:
    f.write(" ".join(c["Entrypoint"] + c["Cmd"]) + "\n")
size = sum(l["size"] for l in manifest["layers"])
print(f"check-image: ok: configuration (user 10001, entrypoint {' '.join(c['Entrypoint'])}, "
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
if [ "$KIND" = controller ]; then
  want_files=(usr/local/bin/cloud-controller usr/local/bin/edge-node usr/lib/edgedesk/libonnxruntime.so
              etc/ssl/certs/ca-certificates.crt usr/share/doc/edgedesk/LICENSE
              usr/share/doc/onnxruntime/LICENSE usr/share/doc/onnxruntime/ThirdPartyNotices.txt)
  max_files=200
else
  want_files=(usr/local/bin/python3 opt/edgedesk/scripts/train_model.py opt/edgedesk/scripts/suggest_intents.py
              opt/edgedesk/data/banking77/train.csv opt/edgedesk/models/e5/tokenizer.json
              usr/share/doc/edgedesk/LICENSE)
  max_files=100000
fi
for f in "${want_files[@]}"; do
  [ -e "$R/$f" ] || fail "/$f is missing"
done
grep -q '^edgedesk:x:10001:10001:' "$R/etc/passwd" || fail "no user edgedesk (10001) in /etc/passwd"
for f in bin/sh usr/bin/sh bin/bash usr/bin/apt usr/bin/dpkg; do
  [ ! -e "$R/$f" ] || fail "/$f is in the image: it should hold no shell or package manager"
done
files=$(find "$R" -type f | wc -l)
[ "$files" -lt "$max_files" ] || fail "$files files: the root filesystem is not minimal"
if [ "$(id -u)" = 0 ]; then
  [ "$(stat -c %u "$R/var/lib/edgedesk")" = 10001 ] || fail "/var/lib/edgedesk is not owned by 10001"
fi
ok "layout ($files files, $(du -sh "$R" | cut -f1) unpacked; ${want_files[*]##*/}; no shell)"

# --- 3. the entrypoint -------------------------------------------------------
# /proc and /dev/shm, as a runtime mounts them (ONNX Runtime reads
# /proc/cpuinfo; Python's multiprocessing wants /dev/shm).
if mount -t proc proc "$R/proc" 2>/dev/null; then
  PROC_MOUNTED=$R/proc
  mkdir -p "$R/dev/shm"
  mount -t tmpfs -o size=64m tmpfs "$R/dev/shm" && PROC_MOUNTED="$R/dev/shm $PROC_MOUNTED"
else
  echo "check-image: note: could not mount /proc in the chroot; running without it" >&2
fi
if [ "$KIND" = trainer ]; then
  run_in /usr/local/bin/python3 -c 'import numpy, scipy, sklearn, skl2onnx, onnx, onnxruntime' \
    || fail "the training toolchain does not import in the image"
  out=$(run_in /usr/local/bin/python3 /opt/edgedesk/scripts/train_model.py --help) || fail "train_model.py --help"
  grep -q -- "--suggest" <<<"$out" || fail "train_model.py --help printed: $out"
  ok "the training toolchain imports and train_model.py answers, as user 10001"
  if [ "$TRAIN" = 1 ]; then
    run_in /usr/local/bin/python3 /opt/edgedesk/scripts/train_model.py --data /opt/edgedesk/data \
      --out /tmp/out >/dev/null || fail "a training run in the image"
    cmp -s "$R/tmp/out/model.onnx" build/models/default/model.onnx \
      || fail "the model trained in the image differs from build/models/default/model.onnx"
    ok "a training run in the image made the same model.onnx, byte for byte, as the one trained here"
  fi
  exit 0
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
