"""The API reference as a reader gets it: the page is built (mkdocs, offline, strict) and
read as HTML. Every loss of the registry has its section with its parameters; examples are
code, never blockquotes; no reST ``::`` leaks into the text; the torch modules show their
real signatures."""

from __future__ import annotations

import html
import os
import pathlib
import re
import subprocess
import sys

import pytest

from entroloss import _losses

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    pytest.importorskip("mkdocs")
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return (site / "api.html").read_text()


def _outside_code(text: str) -> str:
    return re.sub(r"<(pre|code)\b.*?</\1>", " ", text, flags=re.S)


def _section(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    end = page.find('class="doc doc-heading"', page.index(">", start))
    return page[start:end if end > 0 else None]


def test_examples_are_code_and_no_rest_leaks(page):
    assert "<blockquote" not in page
    text = html.unescape(re.sub(r"<[^>]+>", " ", _outside_code(page)))
    assert ">>>" not in text, "an example rendered as text"
    assert not re.search(r"\w::(\s|$)", text), "a reST '::' in the text"


@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_every_loss_has_its_sections_with_its_parameters(page, definition):
    for anchor in (f"entroloss.{definition.name}", f"entroloss.linear_{definition.name}"):
        section = _section(page, anchor)
        assert "Parameters:" in section or "doc-section-title" in section, anchor
        for keyword in definition.option_names():
            assert f"<code>{keyword}</code>" in section, (anchor, keyword)
        assert "&gt;&gt;&gt;" in section and "<code" in section, anchor  # its example, as code
    module = _section(page, f"entroloss.backends.torch.{definition.module}")
    signature = html.unescape(re.sub(r"<[^>]+>", "", module))
    for keyword in ("ignore_index=-100", "learnable=False", *definition.scalars):
        assert keyword in signature, (definition.module, keyword)


def test_a_bound_keeps_its_comparison(page):
    section = html.unescape(re.sub(r"<[^>]+>", " ", _section(page, "entroloss.cross_entropy")))
    assert "logarithm base of the loss, > 1" in section
