#!/usr/bin/env python3
"""Make a benchmark bundle: the default bundle plus a padding file of SIZE MB.

Usage: scripts/bench_bundle.py SIZE_MB OUT_DIR [VERSION]

The padding (random bytes) is listed in the manifest like any bundle file, so
`cloud-controller model publish` signs it and nodes download it; the model
itself is the default one, so the golden set passes.
"""
import hashlib
import json
import os
import shutil
import sys

size_mb, out = int(sys.argv[1]), sys.argv[2]
version = sys.argv[3] if len(sys.argv) > 3 else "9.0.0"
src = os.path.join(os.path.dirname(__file__), "..", "build", "models", "default")
os.makedirs(out, exist_ok=True)
for f in ("model.onnx", "golden.jsonl", "manifest.json"):
    shutil.copy(os.path.join(src, f), os.path.join(out, f))
h = hashlib.sha256()
with open(os.path.join(out, "padding.bin"), "wb") as f:
    for _ in range(size_mb):
        block = os.urandom(1 << 20)
        h.update(block)
        f.write(block)
with open(os.path.join(out, "manifest.json")) as f:
    m = json.load(f)
m["version"] = version
m["files"]["padding.bin"] = h.hexdigest()
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(m, f, indent=2)
print(out)
