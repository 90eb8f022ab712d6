"""The package's layout rules: no private name used across modules, every module's `__all__` names what it
defines, and the import-linter contracts (layers, no cycles) hold."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "src" / "mixwise"


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    """The absolute module an `ImportFrom` reads from (None: outside mixwise)."""
    if node.level == 0:
        return node.module if (node.module or "").split(".")[0] == "mixwise" else None
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_definitions(tree: ast.Module) -> set[str]:
    """Private names a module defines: top-level functions, classes and variables, class members, `self._x`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and private(node.name):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and private(node.attr):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and private(node.id):
            names.add(node.id)
    return names


def cross_module_private_uses(trees: dict[str, ast.Module]) -> list[str]:
    defined = {name: private_definitions(tree) for name, tree in trees.items()}
    packages = {name for name in trees if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}
    problems = []
    for name, tree in trees.items():
        own = defined[name]
        elsewhere = set().union(*(d for m, d in defined.items() if m != name)) - own
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = resolve(name, node, name in packages)
                if source is None:
                    continue
                for alias in node.names:
                    if private(alias.name):
                        problems.append(f"{name}:{node.lineno} imports {alias.name} from {source}")
            elif isinstance(node, ast.Attribute) and private(node.attr) and node.attr in elsewhere:
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                problems.append(f"{name}:{node.lineno} reads .{node.attr}, a private name of another module")
    return problems


def test_no_private_name_is_used_across_modules():
    assert cross_module_private_uses(modules()) == []


def test_the_check_catches_a_private_import_and_a_private_attribute():
    trees = {
        "mixwise.a": ast.parse(
            "def _helper():\n    pass\nclass Pool:\n    def __init__(self):\n        self._loader = 1\n"
        ),
        "mixwise.b": ast.parse("from .a import _helper\n\ndef f(pool):\n    return pool._loader\n"),
    }
    problems = cross_module_private_uses(trees)
    assert any("imports _helper" in p for p in problems) and any("._loader" in p for p in problems)


def test_every_all_entry_is_defined():
    for name, tree in modules().items():
        value = next(
            (
                node.value
                for node in tree.body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
            ),
            None,
        )
        if value is None:
            continue
        if not isinstance(value, ast.List | ast.Tuple):  # a package whose __all__ is its table of lazy re-exports
            module = importlib.import_module(name)
            unresolved = [n for n in module.__all__ if not hasattr(module, n)]
            assert not unresolved, f"{name}.__all__ names {unresolved}, which it cannot import"
            continue
        exported = ast.literal_eval(value)
        defined = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
            elif isinstance(node, ast.ImportFrom):
                defined |= {a.asname or a.name for a in node.names}
        missing = sorted(set(exported) - defined)
        assert not missing, f"{name}.__all__ names {missing}, which it does not define"


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")
def test_import_linter_contracts_hold():
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout
