"""The package layering is one-way: no module imports a layer above its own.

Each project module belongs to a layer; a layer may import itself and the layers listed for it,
nothing else. Imports are read from the source (``ast``), including imports inside functions,
so a lazy import cannot dodge the rule. ``docs/ARCHITECTURE.md`` ("Code map") states the same
table in prose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "evaluation", "stages")

# Module prefix -> layer; the longest matching prefix wins.
LAYER_OF = {
    "pipeline.errors": "base",
    "pipeline.io": "base",
    "pipeline.config": "base",
    "pipeline.paths": "base",
    "pipeline.tracking": "base",
    "pipeline.executions": "base",
    "pipeline.host_memory": "base",
    "pipeline.data": "data",
    "pipeline.kernels": "kernels",
    "pipeline.ops": "ops",
    "pipeline.model": "model",
    "pipeline.model_io": "model_io",
    "pipeline.export": "export",
    "pipeline.parallel": "parallel",
    "pipeline.train": "train",
    "evaluation": "evaluation",
    "stages": "stages",
}
MAY_IMPORT = {
    "base": set(),
    "data": {"base"},
    "kernels": {"base"},
    "ops": {"base", "kernels"},
    "model": {"base", "ops"},
    "model_io": {"base", "model"},
    "export": {"base", "model", "model_io"},
    "parallel": {"base", "model"},
    "train": {"base", "data", "model", "model_io", "parallel"},
    # Evaluation reads what the stages wrote: never the trainer, never the corpus generator.
    "evaluation": {"base", "data", "model", "model_io", "export"},
    "stages": set(LAYER_OF.values()),
}
FORBIDDEN = {"evaluation": ("pipeline.data.synthetic",)}


def layer_of(module: str) -> str:
    matches = [prefix for prefix in LAYER_OF if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module}: in no layer; add it to LAYER_OF in {__file__}")
    return LAYER_OF[max(matches, key=len)]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def violations(module: str, source: str) -> list[str]:
    """``module imports target (layer a -> layer b)`` for every import the table forbids."""
    layer = layer_of(module)
    found = []
    for target in sorted(project_imports(source)):
        target_layer = layer_of(target)
        forbidden = any(target.startswith(p) for p in FORBIDDEN.get(layer, ()))
        if forbidden or (target_layer != layer and target_layer not in MAY_IMPORT[layer]):
            found.append(f"{module} imports {target} ({layer} -> {target_layer})")
    return found


# Every module with code (an empty ``__init__.py`` imports nothing and belongs nowhere).
MODULES = sorted(
    p for package in PACKAGES for p in (REPO / package).rglob("*.py") if p.read_text().strip()
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_layer_above_its_own(path):
    assert violations(module_name(path), path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "module,source",
    [
        ("pipeline.model.moe", "def f():\n    from pipeline.parallel.setup import x\n"),
        ("pipeline.parallel.dcp", "import pipeline.train.module\n"),
        ("evaluation.routing", "from pipeline.data.synthetic import word_categories\n"),
        ("pipeline.ops.reference", "from pipeline.model.moe import MoELayer\n"),
    ],
)
def test_the_checker_catches_upward_and_forbidden_imports(module, source):
    assert len(violations(module, source)) == 1


def test_every_layer_in_the_table_exists():
    layers = {layer_of(module_name(path)) for path in MODULES}
    assert layers == set(MAY_IMPORT)
