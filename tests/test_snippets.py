"""Every ```python block of README.md and docs/*.md runs (issue 25, item 4). The blocks of
one file run in order in one namespace, as a reader pastes them into one session. A block
preceded by ``<!-- snippet: needs MODULE -->`` skips, saying so, where MODULE cannot be
imported (``cupy-gpu``: CuPy with a GPU); ``<!-- snippet: skip REASON -->`` skips it for
the reason given. A file's blocks after a skipped one still run."""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*snippet:\s*(?P<mark>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)^```",
                   re.S | re.M)


def blocks(path: pathlib.Path) -> list[tuple[int, str, str | None]]:
    """(line, code, marker) of each ```python block of ``path``."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("mark"))
            for m in BLOCK.finditer(text)]


def _missing(need: str) -> str | None:
    """Why a block that needs ``need`` cannot run here, or None."""
    if need == "cupy-gpu":
        try:
            import cupy

            return None if cupy.cuda.is_available() else "CuPy has no GPU here"
        except Exception:  # ImportError, or a CUDA library that fails to load
            return "CuPy is not installed"
    try:
        importlib.import_module(need)
    except ImportError:
        return f"{need} is not installed"
    return None


CASES = [pytest.param(path, id=str(path.relative_to(ROOT))) for path in FILES if blocks(path)]


def test_the_docs_have_snippets():
    assert len(CASES) >= 10 and sum(len(blocks(p)) for p in FILES) >= 15


@pytest.mark.parametrize("path", CASES)
def test_snippets_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    namespace: dict = {"__name__": "__snippet__"}
    skipped = []
    for line, code, mark in blocks(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        if mark:
            verb, _, arg = mark.partition(" ")
            reason = _missing(arg.strip()) if verb == "needs" else arg.strip()
            assert verb in ("needs", "skip") and arg.strip(), f"{where}: unknown marker {mark!r}"
            if reason:
                skipped.append(f"{where}: {reason}")
                continue
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the snippet at {where} fails: {error!r}") from error
    if skipped:
        pytest.skip("; ".join(skipped) + " (the file's other snippets ran)")


def test_markers_are_understood(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- snippet: needs no_such_module_xyz -->\n```python\nraise SystemExit\n```\n"
                    "```python\nx = 1\n```\n")
    (first, _, mark), (_, code, none) = blocks(page)
    assert first == 4 and mark == "needs no_such_module_xyz" and none is None and code == "x = 1\n"
    assert _missing("no_such_module_xyz") == "no_such_module_xyz is not installed"
    assert _missing("math") is None
