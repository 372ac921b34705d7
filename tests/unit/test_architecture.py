"""The layering rules of docs/architecture.md, checked on the source (not by convention):

* the core (``plugins/astrid`` minus ``astrid.airflow``) never imports Airflow, at any level
  (a lazy import inside a function counts: it would still tie the core to Airflow);
* no import cycles among AstrID's modules, lazy imports included (a cycle means two modules
  share a fact that belongs in a third);
* the module map names every module, so it stays true as modules are added.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
PACKAGE = PLUGINS / "astrid"


def _modules() -> dict[str, Path]:
    """``astrid.x.y`` → its file, migrations and static assets left out (not importable code)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PLUGINS).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    """Every module name ``module`` imports anywhere in its file, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The AstrID module that ``name`` (a module or a name in one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_the_core_never_imports_airflow():
    offenders = {
        module: sorted(n for n in _imports(module, path) if n == "airflow" or n.startswith("airflow."))
        for module, path in _modules().items()
        if not (module == "astrid.airflow" or module.startswith("astrid.airflow."))
    }
    assert not {m: n for m, n in offenders.items() if n}, offenders


def test_no_import_cycles_among_astrid_modules():
    modules = _modules()
    graph = {
        module: {
            owner
            for name in _imports(module, path)
            if (owner := _owner(name, modules)) and owner != module and not module.startswith(owner + ".")
        }
        for module, path in modules.items()
    }
    cycles = _cycles(graph)
    assert not cycles, f"import cycles (lazy imports included): {cycles}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    """The check above can fail: a three-module ring and a self-contained pair are reported."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_module_map_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```", 2)[1]
    airflow_part, _, core_part = block.partition("\nplugins/astrid/  ")
    named_airflow = set(re.findall(r"\b([a-z_]+\.py)\b", airflow_part.split("plugins/astrid/airflow/", 1)[1]))
    named_core = set(re.findall(r"\b((?:[a-z_]+/)?[a-z_]+\.py)\b", core_part))
    missing = []
    for path in _modules().values():
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("airflow/"):
            if path.name not in named_airflow:
                missing.append(relative)
        elif relative not in named_core:
            missing.append(relative)
    assert not missing, f"docs/architecture.md's module map does not name: {missing}"
