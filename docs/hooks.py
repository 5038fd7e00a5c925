"""MkDocs hooks: the API reference lists the losses of the registry (``entroloss._losses``),
so a new entry appears there with no edit of the page."""

from __future__ import annotations

from entroloss._losses import LOSSES


def _entries(template: str) -> str:
    return "\n\n".join(template.format(d=d) for d in LOSSES)


MARKERS = {
    "<!-- registry: losses -->": lambda: _entries("::: entroloss.{d.name}"),
    "<!-- registry: linear losses -->": lambda: _entries("::: entroloss.linear_{d.name}"),
    # a module's own section: its signature and docstring, not nn.Module's members
    "<!-- registry: torch modules -->": lambda: _entries(
        "::: entroloss.backends.torch.{d.module}\n    options:\n      members: false"),
}


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    for marker, entries in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, entries())
    return markdown
