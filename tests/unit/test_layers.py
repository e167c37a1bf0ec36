"""The import graph, read from the code: imports only point down the layers of docs/architecture.md,
use cases and adapters never import each other, ca_core imports no I/O library, and no module
imports itself through others (no circle)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAYERS = {
    "schemas": 0,
    "ca_core": 1,
    "hsm": 2, "storage": 2,
    "plumbing": 3,
    "issuance": 4, "revocation": 4, "crl_publisher": 4, "ocsp_responder": 4,
    "shomei": 5,
}
IO_LIBRARIES = {"asyncpg", "aiohttp", "pkcs11", "psycopg", "yoyo", "prometheus_client", "uvloop", "click"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module (ours or a library's top-level name) that ``name`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES)
    return out


GRAPH = {name: {i for i in _imports(name, path) if i in MODULES or i.split(".")[0] in LAYERS}
         for name, path in MODULES.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_package_is_in_a_layer():
    on_disk = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests", "benchmarks"}
    assert on_disk <= set(LAYERS), on_disk - set(LAYERS)


def test_imports_point_down():
    upward = sorted(f"{m} -> {i}" for m, imports in GRAPH.items() for i in imports
                    if LAYERS[_top(i)] > LAYERS[_top(m)])
    assert upward == []


def test_no_sideways_imports_between_use_cases_or_adapters():
    sideways = sorted(f"{m} -> {i}" for m, imports in GRAPH.items() for i in imports
                      if _top(i) != _top(m) and LAYERS[_top(i)] == LAYERS[_top(m)])
    assert sideways == []


def test_domain_imports_no_io_library():
    used = sorted(f"{m} -> {i}" for m, path in MODULES.items() if _top(m) == "ca_core"
                  for i in _imports(m, path) if i.split(".")[0] in IO_LIBRARIES)
    assert used == []


def test_no_import_circle():
    graph = {m: {i for i in imports if i in MODULES and i != m} for m, imports in GRAPH.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_graph_is_read_from_the_code():
    """The graph is really read from the code: a known downward import is in it."""
    assert "plumbing.http" in GRAPH["issuance.http"]
    assert "ca_core.errors" in GRAPH["plumbing.http"]


def test_sql_only_in_storage():
    """Every statement is sent from storage/ (the adapter); other layers call its functions."""
    import re

    sends = re.compile(r"\.(execute|executemany|fetch|fetchval|fetchrow|copy_records_to_table)\(")
    found = sorted(f"{name}:{n}" for name, path in MODULES.items() if _top(name) not in ("storage", "schemas")
                   for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if sends.search(line))
    assert found == []
