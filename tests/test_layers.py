"""The package's rooms have one-way doors: `cluster` uses `stream`, never the reverse; training and the
engine meet only above both. Imports are read from the source (ast), lazy ones inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "unweather"

# area -> the areas it must never import (`unweather.X` prefixes).
FORBIDDEN = {
    "stream": ("unweather.cluster",),
    "training": ("unweather.engine",),
}
# Modules that hold what several areas share: below all of them.
SHARED = ("media.py", "sources_file.py", "fileio.py", "errors.py", "redact.py")
AREAS = ("unweather.stream", "unweather.cluster", "unweather.training", "unweather.engine", "unweather.bench")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports, anywhere in the file (top level, functions, TYPE_CHECKING blocks),
    with its line; `importlib.import_module("...")` with a literal name counts too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; the checks need absolute ones")
            found.append((node.lineno, node.module))
            # `from unweather import engine` imports the module unweather.engine.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files:
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                shown = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE.parent) else path
                bad.append(f"{shown}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_areas_never_import_what_sits_beside_or_above_them(area):
    files = sorted((PACKAGE / area).rglob("*.py"))
    assert files, f"no modules in unweather/{area}"
    assert violations(files, FORBIDDEN[area]) == []


def test_shared_modules_sit_below_every_area():
    assert violations([PACKAGE / name for name in SHARED], AREAS) == []


def test_the_check_sees_lazy_and_aliased_imports(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    import unweather.cluster.ray_run\n"
                    "def f():\n    from unweather import engine as e\n    return e\n"
                    "def g():\n    import importlib\n    return importlib.import_module('unweather.cluster.cli')\n"
                    "def h():\n    from unweather.engineering import x\n")
    found = [m for _, m in imported_modules(code)]
    assert "unweather.cluster.ray_run" in found and "unweather.engine" in found and "unweather.cluster.cli" in found
    assert len(violations([code], ("unweather.cluster",))) == 2
    # A module whose name merely starts the same way is another module.
    assert [v for v in violations([code], ("unweather.engine",)) if "engineering" in v] == []
