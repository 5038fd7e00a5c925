"""The package as users get it: installed layout, import hygiene, the command line, and the
docstring examples."""

from __future__ import annotations

import doctest
import json
import pathlib
import subprocess
import sys


import entroloss as el
from tests.helpers.cases import LOSSES
from tests.helpers.cli import nudged_math_env, run_cli


def test_tests_run_against_the_installed_package():
    import entroloss.backends

    package = pathlib.Path(el.__file__).parent
    assert "site-packages" in package.parts, f"tests import the source tree: {package}"
    assert pathlib.Path(entroloss.backends.__file__).parent == package / "backends"


def test_import_pulls_in_no_framework():
    code = (
        "import sys, entroloss, entroloss.backends\n"
        "import numpy as np\n"
        "entroloss.min_ent(np.zeros((2, 3)), np.array([0, 1]))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'jax', 'cupy', 'array_api_strict'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_docstring_examples():
    from entroloss import _api

    result = doctest.testmod(_api, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= 15  # every public function has an example


_cli = run_cli


def test_verify_passes_and_prints_a_table():
    out = _cli("verify", "--backend", "numpy")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "numpy" in out.stdout and "0 mismatches" in out.stdout
    for name in LOSSES:
        assert name in out.stdout


def test_verify_json():
    out = _cli("verify", "--backend", "array_api_strict", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    assert {r["loss"] for r in rows} == set(LOSSES)
    assert all(r["ok"] and r["backend"] == "array_api_strict" for r in rows)


def test_verify_exits_non_zero_on_a_mismatch(tmp_path):
    # a sitecustomize that nudges the shared forward by 1e-3 makes every backend wrong
    env = nudged_math_env(tmp_path)
    out = _cli("verify", "--backend", "numpy", env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "MISMATCH" in out.stdout


def test_unknown_command_is_refused():
    assert _cli("frobnicate").returncode == 2


def test_the_reference_shares_no_code_with_the_math():
    """``entroloss.tools.reference`` is the yardstick of verify and the tests: it may read
    the registry of losses (names, defaults), nothing of the math it checks."""
    import ast

    from entroloss.tools import reference

    tree = ast.parse(pathlib.Path(reference.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "math", "typing", "numpy", ".._losses"}, imported
