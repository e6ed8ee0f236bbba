"""Architecture checks (import-linter contracts in pyproject.toml, and one AST check):

* only ``fedsynth.fed.flower`` imports ``flwr``;
* packages sit in layers (nothing imports the CLI; data never imports models, ...);
* no import cycle among fedsynth's packages and sub-packages;
* fed's modules never reach into another module's private names (the engine and the Flower
  node share public functions, they do not call each other's ``_internals``).

Each check is also shown to fail when broken: the same contracts run on a copy of the package
with a violation planted in it.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "fedsynth"
pytest.importorskip("importlinter")


def _lint(src_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src_parent)}
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=src_parent)


def test_the_import_contracts_hold():
    res = _lint(SRC.parent)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout


PLANTED = {  # contract id -> (file, line to add) that breaks it
    "Only fedsynth.fed.flower imports flwr": ("metrics/stats.py", "import flwr  # noqa"),
    "Packages in layers; nothing imports the CLI": ("fed/engine.py", "from .. import cli  # noqa"),
    "No import cycle among fedsynth's packages and sub-packages": ("fed/strategies.py", "from . import engine  # noqa"),
}


@pytest.mark.parametrize("contract", sorted(PLANTED))
def test_each_contract_fails_when_broken(tmp_path, contract):
    copy = tmp_path / "src" / "fedsynth"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rel, line = PLANTED[contract]
    f = copy / rel
    f.write_text(f.read_text() + "\n" + line + "\n")
    res = _lint(copy.parent)
    assert res.returncode != 0
    assert f"{contract} BROKEN" in res.stdout, res.stdout[-3000:]


def private_reaches(source: str) -> list[str]:
    """``x._name`` where x is not self/cls, and ``from m import _name``: reaching into another
    object's or module's internals."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                out.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ImportFrom):
            out += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_fed_modules_do_not_reach_into_each_others_private_names():
    found = {str(p.relative_to(SRC)): private_reaches(p.read_text()) for p in sorted((SRC / "fed").rglob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_private_name_check_fails_when_broken():
    assert private_reaches("def f(engine):\n    return engine._train_client(1)\n") == ["line 2: ._train_client"]
    assert private_reaches("from .node import _train\n") == ["line 1: import _train"]
    assert private_reaches("class A:\n    def f(self):\n        return self._x\n") == []
