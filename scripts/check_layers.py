#!/usr/bin/env python3
"""Check that no crate has an import cycle between its modules.

For every crate of the workspace, each `.rs` file is a module (`a::b`).
References `crate::x::y` and `super::x` become edges between modules; an
edge counts between the two siblings under the modules' common parent
(`link::dispatch` -> `handoff::desk` is `link` -> `handoff`), parent/child
edges and test modules are ignored. Any cycle among siblings fails the check
and is printed. Usage: scripts/check_layers.py [CRATE_DIR...]
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["common", "support", "nlu", "dialog", "edge-node", "cloud-controller", "sim", "systest"]
REF = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*)\}\s*;", re.S)


def module_path(src: Path, f: Path):
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    if parts and parts[0] == "bin":
        return None
    return tuple(parts)


def strip_tests(text: str) -> str:
    # Comments name modules without depending on them.
    text = re.sub(r"//[^\n]*", "", text)
    # Drop `#[cfg(test)] mod tests { ... }` blocks written inline.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def refs(text: str):
    for kind, tail, group in USE_GROUP.findall(text):
        base = [p for p in tail.split("::") if p]
        for item in re.split(r",", group):
            item = item.strip().split(" as ")[0].strip()
            first = item.split("::")[0].strip("{} \n")
            if first and first != "self":
                yield kind, base + [first]
            elif first == "self":
                yield kind, base
    for kind, tail in REF.findall(text):
        yield kind, [p for p in tail.split("::") if p]


def check(crate: Path) -> list:
    src = crate / "src"
    if not src.is_dir():
        return []
    modules = {}
    for f in sorted(src.rglob("*.rs")):
        path = module_path(src, f)
        if path is None or (path and path[-1] == "tests"):
            continue
        modules[path] = f
    known = set(modules)
    edges = {}
    for path, f in modules.items():
        text = strip_tests(f.read_text())
        for kind, parts in refs(text):
            if kind == "crate":
                target = tuple(parts)
            else:
                # `super` is the parent module (of a file module or a mod.rs alike).
                target = path[:-1] + tuple(parts)
            while target and target not in known:
                target = target[:-1]
            if target == path or not target:
                continue
            common = 0
            while common < min(len(path), len(target)) and path[common] == target[common]:
                common += 1
            if common == len(path) or common == len(target):
                continue  # parent and child
            a, b = path[: common + 1], target[: common + 1]
            edges.setdefault(a, {}).setdefault(b, (path, target))
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in edges.get(n, {}):
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                cycles.append(" -> ".join("::".join(x) for x in cyc))
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in list(edges):
        if n not in state:
            visit(n, [])
    return cycles


def main() -> int:
    dirs = [Path(a) for a in sys.argv[1:]] or [ROOT / c for c in CRATES]
    bad = 0
    for d in dirs:
        for c in check(d):
            print(f"{d.name}: import cycle {c}")
            bad += 1
    if bad:
        return 1
    print(f"check_layers: no import cycles in {len(dirs)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
