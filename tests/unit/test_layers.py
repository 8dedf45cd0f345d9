"""Imports run one way: a package may import its own layer and the layers below it, never above.

The order (README, "How it is built"): core modules → models → stats → data → editors → training →
eval → use → analysis → experiments → cli. Function-level (lazy) imports count as imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import robustedit

ROOT = Path(robustedit.__file__).parent
CORE = ("errors", "paths", "progress", "output", "seeding", "registry", "request", "config", "rundir")  # in this order too
ORDER = [*CORE, "models", "stats", "data", "editors", "training", "eval", "use", "analysis", "experiments", "cli"]
RANK = {name: (0 if name in CORE else ORDER.index(name)) for name in ORDER}


def _layer(module: str) -> str | None:
    """``robustedit.eval.runner`` → ``eval``; the package facade ``robustedit`` → None (exempt)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                target = ".".join([*package, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(t, line) for t, line in found if t == "robustedit" or t.startswith("robustedit.")]


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        if "resources" in path.parts:
            continue
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield path, ".".join(parts)


def upward_imports() -> list[str]:
    problems = []
    for path, module in _modules():
        own = _layer(module)
        if own is None:
            continue
        assert own in RANK, f"{module}: place the new module or package {own!r} in tests/unit/test_layers.py's ORDER"
        for target, line in _imports(path, module):
            theirs = _layer(target)
            if theirs is None or theirs == own:
                continue
            assert theirs in RANK, f"{module} imports {target}, which has no layer in ORDER"
            if RANK[theirs] > RANK[own] or (RANK[theirs] == RANK[own] == 0 and ORDER.index(theirs) > ORDER.index(own)):
                problems.append(f"{path.relative_to(ROOT.parent)}:{line}: {own} imports {target} ({theirs} is above {own})")
    return problems


def test_no_package_imports_a_layer_above_it():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a fake editors module importing eval is reported."""
    fake = tmp_path / "robustedit"
    (fake / "editors").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "editors" / "__init__.py").write_text("")
    (fake / "editors" / "bad.py").write_text("def f():\n    from robustedit.eval.runner import RunInfo\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert [p.split(": ", 1)[1] for p in upward_imports()] == [
        "editors imports robustedit.eval.runner (eval is above editors)"]
