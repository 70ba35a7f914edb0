"""The dependency rule of docs/architecture.md, checked on the code itself (from its imports, nothing run):

shared infrastructure (``pretrain_distill.core``) <- the distillation library <- the fine-tuning library
<- commands (``*.commands.*``, ``*.cli``: the only modules that may import both stages). No import cycle
between modules, imports at module top except the heavy optional dependencies loaded late on purpose,
each with a comment saying why.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pretrain_distill", "finetune")
#: Imported inside functions on purpose: heavy to import, and needed only on some paths.
LATE_IMPORTS = (
    "deepspeed",
    "triton",
    "sentence_transformers",
    "huggingface_hub",
    "wandb",
    "mlflow",
    "onnx",
    "onnxruntime",
)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _is_command(name: str) -> bool:
    parts = name.split(".")
    return "commands" in parts or parts[-1] == "cli"


def _resolve(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _imports(name: str) -> list[tuple[str, ast.stmt, bool]]:
    """``(imported module of ours or a third-party name, node, at module top)`` for every import."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(f"{module}.{alias.name}", node, id(node) in top) for alias in node.names]
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name in MODULES:
        for target, _, _ in _imports(name):
            ours = _resolve(target)
            if (
                ours
                and ours != name
                and not (MODULES[ours].name == "__init__.py" and name.startswith(ours + "."))
            ):
                edges[name].add(ours)
    return edges


EDGES = _edges()


def _layer(name: str) -> int:
    if _is_command(name):
        return 3
    if name.startswith("finetune"):
        return 2
    if name.startswith("pretrain_distill.core") or name == "pretrain_distill":
        return 0
    return 1


def test_every_import_points_down_the_layers():
    """core <- distillation library <- fine-tuning library <- commands; never upwards."""
    upward = [
        f"{name} -> {target}"
        for name, targets in EDGES.items()
        for target in targets
        if _layer(target) > _layer(name)
    ]
    assert not upward, upward


def test_library_modules_never_import_commands():
    bad = [f"{n} -> {t}" for n, ts in EDGES.items() for t in ts if _is_command(t) and not _is_command(n)]
    assert not bad, bad


def test_no_import_cycle_between_modules():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in EDGES.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in MODULES:
        if name not in index:
            visit(name)
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_sit_at_module_top_unless_heavy_and_explained(name):
    lines = MODULES[name].read_text().splitlines()
    for target, node, at_top in _imports(name):
        if at_top or target.startswith("__future__"):
            continue
        where = f"{MODULES[name].relative_to(REPO)}:{node.lineno}"
        heavy = (
            target.split(".")[0] in LATE_IMPORTS
            or _resolve(target) == "pretrain_distill.objectives.relations_triton"
        )
        assert heavy, f"{where}: import of {target} inside a function (move it to the module top)"
        above = lines[node.lineno - 2].strip()
        assert above.startswith("#"), f"{where}: a late import of {target} needs a comment saying why"


def test_the_layers_hold_real_modules():
    """The rule would hold vacuously if the layout moved: each layer has its modules."""
    layers = defaultdict(list)
    for name in MODULES:
        layers[_layer(name)].append(name)
    assert {0, 1, 2, 3} <= set(layers)
    assert "pretrain_distill.core.command_line" in layers[0] and "finetune.jobs" in layers[2]
    assert EDGES["finetune.jobs"] & {"pretrain_distill.core.distributed"}
