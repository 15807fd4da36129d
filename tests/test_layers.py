"""The package's shape: imports go downward only, no circles, no private names borrowed,
and ``import workflow_cache`` stays light.

Read from the source with ``ast`` (every import counts, including those inside functions
and under ``TYPE_CHECKING``), so a violation fails here before it confuses a reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "workflow_cache"

LAYERS = {
    "workflow_cache.cache": 1,
    "workflow_cache.celery_app": 1,  # the one Celery app factory, shared by fleet and flows
    "workflow_cache.distributed": 2,
    "workflow_cache.workdir": 2,
    "workflow_cache.admin": 3,
    "workflow_cache.cli": 3,
    "workflow_cache.ui": 3,
}
"""Rank of each layer; every other module is core (0). A module imports only its rank or lower."""

SIDEWAYS = {("workflow_cache.distributed", "workflow_cache.workdir")}
"""Layers of one rank that must not import each other (either direction)."""

CORE_FORBIDDEN = ("redis", "celery", "kombu", "fsspec", "s3fs", "zstandard", "sqlite3", "fcntl")
"""What the core (rank 0) never imports: it knows no Redis, Celery or files."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for every import in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node.module, alias.name, node.lineno


def _internal_target(module: str, name: str | None) -> str | None:
    """The workflow_cache module an import reaches (a submodule when the name is one)."""
    if not module.startswith("workflow_cache"):
        return None
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def _layer(module: str) -> tuple[str, int]:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return "core", 0


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, imported, _ in _imports(path):
            target = _internal_target(module, imported)
            if target is not None and target != name and target in MODULES:
                graph[name].add(target)
    return graph


def test_the_module_list_is_read() -> None:
    assert "workflow_cache.step" in MODULES and "workflow_cache.cache.redis" in MODULES


def test_imports_go_downward_only() -> None:
    wrong = []
    for name, path in MODULES.items():
        if name == "workflow_cache":  # the facade re-exports every layer, lazily
            continue
        layer, rank = _layer(name)
        for module, imported, line in _imports(path):
            target = _internal_target(module, imported)
            if target is None or target == "workflow_cache":
                continue
            target_layer, target_rank = _layer(target)
            sideways = (layer, target_layer) in SIDEWAYS or (target_layer, layer) in SIDEWAYS
            if target_rank > rank or sideways:
                wrong.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({layer}) imports {target}"
                )
    assert sorted(set(wrong)) == []


def test_the_core_imports_no_redis_celery_or_files() -> None:
    wrong = []
    for name, path in MODULES.items():
        if name == "workflow_cache" or _layer(name)[1] != 0:
            continue
        for module, _, line in _imports(path):
            if module.split(".")[0] in CORE_FORBIDDEN:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert wrong == []


def test_there_are_no_import_circles() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert circles == []


def test_no_private_name_is_imported_from_another_module() -> None:
    borrowed = []
    for path in MODULES.values():
        for module, imported, line in _imports(path):
            target = _internal_target(module, imported)
            if target is None or imported is None or target == f"{module}.{imported}":
                continue
            if imported.startswith("_") and not imported.startswith("__"):
                borrowed.append(f"{path.relative_to(PACKAGE.parent)}:{line} {module}.{imported}")
    assert borrowed == []


HEAVY = ("redis", "celery", "kombu", "opentelemetry", "pydantic_settings", "zstandard", "fsspec")


def test_importing_the_package_loads_no_heavy_library() -> None:
    code = f"import sys, workflow_cache\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["RedisCache", "LocalCache", "ClaimTimeout", "Settings"])
def test_a_lazy_name_loads_its_module_on_first_use(name: str) -> None:
    code = f"import workflow_cache as w; print(type(getattr(w, {name!r})).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in {"type", "ModelMetaclass", "ABCMeta"}
