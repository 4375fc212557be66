"""Print the package-level import graph of `ml_platform` as Mermaid, drawn from the code.

    .venv/bin/python docs/import_graph.py > /tmp/graph.mmd

Nodes are the subpackages (`core`, `resources`, `release`, `assets`, `automation`, `serving`)
and the top-level modules; those every layer imports are one `foundation` node, with the edges
into it left out. An edge A --> B means some module of A imports some module of B (function-level
imports included, as import-linter counts them). Edges that go up or sideways between the layers
of `[tool.importlinter]` are drawn dashed: they should be only the temporary `ignore_imports`.
Uses grimp, which import-linter installs.
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("core", "resources", "release", "assets", "automation", "serving")
# Imported from every layer (the spec model, settings, names, paths, the instance): one node,
# and edges into it are left out, or they would be most of the picture.
FOUNDATION = {"specs", "spec_checks", "settings", "names", "layout", "instance", "dagster_storage"}
# Layer of each node, top (0) to bottom; nodes not named sit outside the layers contract.
RANK = {
    "cli": 0,
    "production": 1,
    "demo": 2,
    "definitions": 3,
    "locations": 3,
    "runs": 3,
    "lineage": 3,
    "assemble": 4,
    "assets": 5,
    "automation": 5,
    "serving": 5,
    "release": 6,
    "resources": 7,
    "core": 8,
}


def node(module: str) -> str:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "ml_platform"
    return "foundation" if name in FOUNDATION else name


def edges() -> set[tuple[str, str]]:
    graph = grimp.build_graph("ml_platform")
    found = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = node(module), node(imported)
            if a != b and "ml_platform" not in (a, b) and b != "foundation":
                found.add((a, b))
    return found


def upward(a: str, b: str) -> bool:
    return a in RANK and b in RANK and RANK[a] >= RANK[b]


def mermaid(found: set[tuple[str, str]]) -> str:
    lines = ["flowchart TD"]
    label = " · ".join(sorted(FOUNDATION))
    lines.append(f"  foundation[[{label}: imported from every layer]]")
    for a, b in sorted(found):
        arrow = "-.->|upward: temporary|" if upward(a, b) else "-->"
        lines.append(f"  {a}{'[' + a + '/]' if a in PACKAGES else ''} {arrow} {b}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(mermaid(edges()))
