"""The package's import direction: no module imports from a layer above its own (docs/design.md §6)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "referencelcm"
# Lowest first. A module may import from its own layer and the ones below, never from above.
LAYERS = (
    {"_quiet", "arguments", "state_dicts", "models", "data", "metrics"},
    {"pipelines"},
    {"training", "convert", "evaluation", "extract", "diagnostics"},
    {"targets", "build_report", "animate", "demo"},
    {"cli", "__init__", "__main__"},
)


def layer_of(top: str) -> int:
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"referencelcm.{top} is in no layer of tests/test_layering.py: add it where it belongs.")


def imported_tops(path: Path) -> set[str]:
    """Top-level referencelcm modules that ``path`` imports (relative or absolute, module level or inside functions)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for referencelcm/x.py, 1 for referencelcm/models/x.py …
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root, then descend
                if node.level - 1 > depth:
                    continue
                parts = list(path.relative_to(PACKAGE).parts[: depth - (node.level - 1)])
                parts += (node.module or "").split(".") if node.module else []
                names = [alias.name for alias in node.names] if not parts else [parts[0]]
                tops.update(name for name in names if name)
            elif node.module and node.module.split(".")[0] == "referencelcm":
                tops.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "referencelcm" and len(parts) > 1:
                    tops.add(parts[1])
    return tops


def test_no_module_imports_from_a_layer_above_its_own():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for imported in imported_tops(path) - {top}:
            if layer_of(imported) > layer_of(top):
                violations.append(f"{path.relative_to(PACKAGE)} imports referencelcm.{imported}")
    assert not violations, "imports from a higher layer:\n" + "\n".join(violations)


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    module = PACKAGE / "pipelines" / "pipeline_referencelcm.py"
    assert {"models", "pipelines"} <= imported_tops(module)
    assert "training" not in imported_tops(module)  # inference does not depend on the training library
    assert "evaluation" in imported_tops(PACKAGE / "targets.py")
