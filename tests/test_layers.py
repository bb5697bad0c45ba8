"""The package layering the README's Layout table states, read from the source: every import
(module level, function-local or for type checking alike) points down or sideways within its
package, and no modules import each other in a circle."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "thrifty"

#: Bottom first. A module may import its own package and any package of a lower rank.
RANKS: dict[str, int] = {
    "errors": 0, "paths": 0, "jsonlimits": 0, "bodylimit": 0,
    "catalog": 1,
    "providers": 2,
    "spend": 3,
    "router": 4,
    "multipliers": 5,
    "config": 6,
    "pipeline": 7,
    "reports": 8,
    "gateway": 9,
    "cli": 10,
    "testing": 11,
}


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name: str, path: pathlib.Path) -> set[str]:
    """The thrifty modules ``name`` imports anywhere in its source."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # ``from a import b``: the module a.b when there is one
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {_module(t) for t in targets if t.startswith("thrifty.")} - {name, "thrifty"}


def _module(target: str) -> str:
    while target not in MODULES:
        target = target.rpartition(".")[0]
    return target


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def layer(module: str) -> str:
    return module.split(".")[1] if module != "thrifty" else "errors"


def test_every_package_has_a_rank():
    assert {layer(m) for m in MODULES} <= set(RANKS)


def test_imports_point_down():
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in GRAPH.items()
        for target in targets
        if layer(source) in RANKS and layer(target) != layer(source)
        and RANKS[layer(target)] >= RANKS[layer(source)] and RANKS[layer(source)] > 0
    )
    assert upward == []


def test_base_modules_import_only_each_other():
    base = {m for m in MODULES if m != "thrifty" and RANKS.get(layer(m)) == 0}
    assert {m: GRAPH[m] - base for m in base if GRAPH[m] - base} == {}


def test_no_import_circle():
    """Tarjan's strongly connected components: any with two modules or more is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                circles.append(sorted([node, *component]))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert circles == []


def test_the_checker_sees_local_and_type_checking_imports(tmp_path):
    """Guards the checker itself: circles here used to hide behind function-local imports."""
    source = tmp_path / "fake.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from thrifty.pipeline.call import Call\n"
        "def f():\n    from thrifty.gateway import app\n    import thrifty.reports.query\n"
    )
    assert imports("thrifty.spend.fake", source) == {
        "thrifty.pipeline.call", "thrifty.gateway.app", "thrifty.reports.query"}
