"""The source's shape: the math imports nothing of the package above it, and no module
grows past what one reader takes in."""

from __future__ import annotations

import ast
import pathlib

import pytest

import entroloss
import entroloss.backends

PACKAGE = pathlib.Path(entroloss.__file__).parent
MATH = PACKAGE / "_math"
MAX_LINES = 450


def _from_above(path: pathlib.Path) -> list:
    """The imports in ``path`` that reach out of its package: relative ones of more than
    one dot, absolute ones of ``entroloss``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "entroloss"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 1 or (node.level == 0 and module.split(".")[0] == "entroloss"):
                found.append("." * node.level + module)
    return found


@pytest.mark.parametrize("path", sorted(MATH.glob("*.py")), ids=lambda p: p.name)
def test_the_math_imports_nothing_above_itself(path):
    assert _from_above(path) == []


def test_an_import_from_above_is_seen(tmp_path):
    """The check itself: relative and absolute imports out of the package are found, an
    import within it and a library's are not."""
    module = tmp_path / "m.py"
    module.write_text("from .. import _arrays\nimport entroloss._validate\n"
                      "from entroloss import backends\nfrom . import spec\nimport numpy\n")
    assert _from_above(module) == ["..", "entroloss._validate", "entroloss"]


BACKENDS = pathlib.Path(entroloss.backends.__file__).parent


def _modules() -> list:
    files = [p for p in PACKAGE.rglob("*.py") if BACKENDS not in p.parents]
    named = [(str(p.relative_to(PACKAGE)), p) for p in files]
    named += [(f"backends/{p.relative_to(BACKENDS)}", p) for p in BACKENDS.rglob("*.py")]
    return [pytest.param(p, id=name) for name, p in sorted(named)]


@pytest.mark.parametrize("path", _modules())
def test_no_module_is_over_the_line_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines, over {MAX_LINES}"
