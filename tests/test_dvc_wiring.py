"""dvc.yaml declares, for each stage, exactly the project code the stage imports.

The imports are read from the source (``ast``), transitively and including imports inside
functions, so a lazily imported module is still caught. A missing dep means a code change would
not re-run the stage; an extra one means it would re-run for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "evaluation")


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def project_files_imported_by(entry: Path) -> set[str]:
    """Project ``.py`` files reachable from ``entry``; empty ``__init__`` files are ignored."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c imports a/__init__, a/b/__init__, ...
                found = module_file(".".join(parts[:i]))
                if found:
                    todo.append(found)
    return {
        str(p.relative_to(REPO))
        for p in seen
        if not (p.name == "__init__.py" and not p.read_text().strip())
    }


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_match_imports(stage):
    declared = {d for d in STAGES[stage]["deps"] if d.endswith(".py")}
    cmd = STAGES[stage]["cmd"]
    assert cmd.startswith("python -m stages."), cmd
    entry = module_file(cmd.split()[-1])
    assert entry is not None, f"{cmd}: module not found"
    assert declared == project_files_imported_by(entry)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_params_sections_exist(stage):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in STAGES[stage].get("params", []):
        node = params
        for part in key.split("."):
            assert part in node, f"dvc.yaml stage {stage}: params key {key!r} not in params.yaml"
            node = node[part]
