#!/usr/bin/env python3
"""Import cycles among one crate's modules, from its `crate::` paths.

Usage: deploy/module-cycles.py metaserver/src   (exit 1 if any cycle)

Every `crate::a::...` path in module b's files (use lines and inline
paths alike, tests excluded) is an edge b -> a; a module is a top-level
file or directory of src/. Prints each module's edges and every cycle.
"""
import re
import sys
from pathlib import Path


def module_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src)
    return rel.parts[0].removesuffix(".rs")


def strip_tests(text: str) -> str:
    # Drop `#[cfg(test)] mod tests { ... }` at the end of a file.
    at = text.find("#[cfg(test)]\nmod tests")
    return text if at < 0 else text[:at]


def edges(src: Path) -> dict:
    graph = {}
    for file in sorted(src.rglob("*.rs")):
        module = module_of(src, file)
        if module in ("lib", "main"):
            continue
        text = strip_tests(file.read_text())
        text = re.sub(r"//.*", "", text)
        targets = graph.setdefault(module, set())
        # `use crate::{a, b::c}` and `crate::a::x` paths.
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            for part in group.split(","):
                name = part.strip().split("::")[0]
                if name:
                    targets.add(name)
        for name in re.findall(r"crate::([a-z_][a-z_0-9]*)", text):
            targets.add(name)
        targets.discard(module)
    modules = set(graph)
    return {m: sorted(t & modules) for m, t in graph.items()}


def cycles(graph: dict) -> list:
    # Strongly connected components (Tarjan); a component of two or more
    # modules is a cycle.
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "metaserver/src")
    graph = edges(src)
    for module, targets in sorted(graph.items()):
        print(f"{module:<12} -> {', '.join(targets) or '-'}")
    found = cycles(graph)
    for component in found:
        print("cycle among:", ", ".join(component))
    if not found:
        print(f"no import cycle among the modules of {src}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
