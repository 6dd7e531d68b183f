"""The library's imports point one way: no cycle, nothing upward, never into its orchestrator or training."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "anonymizer"

# A module may import from its own layer's package and from lower layers only.
LAYERS = [
    {"faces", "regions", "headpose", "registry", "models", "logs", "exit_codes", "imageio", "storage", "policy",
     "onnx_runtime", "onnx_torch", "tflite_runtime", "int8", "pyplot"},
    {"detect"},
    {"measure"},
    {"bank"},
    {"anonymize"},
    {"components", "policy_check", "validate", "report", "release", "vault", "identity"},
    {"pipeline"},
    {"eval", "cli"},
]
FORBIDDEN_ROOTS = {"flows", "tasks", "training", "bench", "tests"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports count too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{a.name}"
                out.add(sub if (LIB.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                        or (LIB.parent / sub.replace(".", "/") / "__init__.py").exists() else base)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in LIB.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/test_layout.py; add it where it belongs")


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_upward_imports():
    bad = [f"{m} -> {i}" for m, deps in _graph().items() for i in deps if _layer(i) > _layer(m)]
    assert not bad, "imports from a higher layer: " + "; ".join(sorted(bad))


@pytest.mark.parametrize("path", sorted(LIB.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_the_library_never_imports_its_orchestrator_or_training(path):
    roots = {i.split(".")[0] for i in _imports(path)}
    assert not roots & FORBIDDEN_ROOTS, f"{path.relative_to(REPO)} imports {sorted(roots & FORBIDDEN_ROOTS)}"
