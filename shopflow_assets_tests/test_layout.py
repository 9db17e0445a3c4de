"""The package's shape: each floor imports only from the floors below it, and no import runs in a
circle. Read from the source (ast), so an import inside a function counts as well."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# lowest first: a module may import from its own floor (within a feature) or any floor below
FLOORS = [
    ("shopflow_assets.contract",),
    ("shopflow_assets.settings", "shopflow_assets.core"),
    ("shopflow_assets.engines",),
    ("shopflow_assets.defs",),
    ("shopflow_assets.commands", "shopflow_assets.definitions"),
]
JOBS = "shopflow_jobs"  # programs that run on an engine's side: the contract only


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith(("shopflow_assets", JOBS)):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(("shopflow_assets", JOBS)))
    return found


def modules() -> dict[str, set[str]]:
    paths = [*(REPO_ROOT / "shopflow_assets").rglob("*.py"), *(REPO_ROOT / JOBS).rglob("*.py")]
    names = {module_name(p): p for p in paths}
    return {name: {i for i in internal_imports(path) if i in names} for name, path in names.items()}


def floor(module: str) -> int | None:
    for n, prefixes in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return n
    return None


def feature(module: str) -> str:
    return ".".join(module.split(".")[:3])  # shopflow_assets.defs.<feature>


def test_every_module_has_a_floor():
    assert [m for m in modules() if floor(m) is None and not m.startswith(JOBS) and m != "shopflow_assets"] == []


def test_no_import_runs_up_a_floor():
    upward = []
    for module, imported in modules().items():
        for target in imported:
            if module.startswith(JOBS):
                if not target.startswith("shopflow_assets.contract"):
                    upward.append(f"{module} -> {target} (a job imports the contract only)")
            elif floor(target) is not None and floor(module) is not None and floor(target) > floor(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_runs_in_a_circle():
    graph = modules()
    # modules, then features of defs: a feature may use another, but never in a circle
    features: dict[str, set[str]] = {}
    for module, imported in graph.items():
        if module.startswith("shopflow_assets.defs."):
            features.setdefault(feature(module), set()).update(
                feature(t) for t in imported if t.startswith("shopflow_assets.defs.") and feature(t) != feature(module)
            )
    for g in (graph, features):
        state: dict[str, int] = {}

        def visit(node: str, path: list[str]) -> None:
            state[node] = 1
            for nxt in sorted(g.get(node, ())):
                if state.get(nxt) == 1:
                    raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
                if state.get(nxt) is None:
                    visit(nxt, path + [nxt])
            state[node] = 2

        for node in sorted(g):
            if node not in state:
                visit(node, [node])


def test_every_benchmark_imports():
    """Benchmarks run on demand, not in the suite: an import they rely on that a change moved would
    otherwise go unnoticed until someone needs the figures."""
    import importlib

    names = sorted(p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
    assert "spark" in names and "ingest" in names
    for name in names:
        importlib.import_module(f"benchmarks.{name}")
