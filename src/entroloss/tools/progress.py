"""The one progress bar of the command-line tools and the training scripts.

On a terminal the bar is redrawn in place on stderr (``\\r``), so it never mixes with the
results on stdout. Where stderr is a file or a pipe (a log, a CI job, a test capturing
it) redrawing would leave a long line of carriage returns, so there the caller's
``log`` lines are printed instead, one per line.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["ProgressBar", "counter"]


class ProgressBar:
    """``[#####.....] text`` on stderr, redrawn in place when stderr is a terminal.

    ``enabled=False`` silences it entirely (the tools' ``--json`` mode).
    """

    def __init__(self, *, enabled: bool = True, width: int = 30, stream: TextIO | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.width = width
        self.live = enabled and self.stream.isatty()  # redraw in place, or log lines

    def draw(self, done: float, total: float, text: str = "", *, prefix: str = "") -> None:
        """On a terminal: redraw the bar filled to ``done / total``, then ``text``."""
        if not self.live:
            return
        filled = int(self.width * done / total)
        print(f"\r{prefix}[{'#' * filled}{'.' * (self.width - filled)}] {text}", end="",
              file=self.stream, flush=True)

    def log(self, line: str) -> None:
        """Elsewhere: print ``line`` on its own (the terminal has the bar instead)."""
        if self.enabled and not self.live:
            print(line, file=self.stream, flush=True)

    def finish(self) -> None:
        """End the bar's line on a terminal, so the next output starts on a fresh one."""
        if self.live:
            print(file=self.stream, flush=True)


def counter(enabled: bool, *, label_width: int = 40, start: str | None = None):
    """``progress(i, total, label)`` for a tool's ``run``: a bar on a terminal,
    ``[i/total] label`` lines elsewhere, nothing when ``enabled`` is false (``--json``);
    ``start`` is said before the first step (e.g. while the frameworks load)."""
    bar = ProgressBar(enabled=enabled)
    if start is not None:
        bar.draw(0, 1, start)
        bar.log(start)

    def progress(i: int, total: int, label: str) -> None:
        bar.draw(i, max(total, 1), f"{i}/{total} {label:<{label_width}}")
        bar.log(f"[{i}/{total}] {label}")
        if i == total:
            bar.finish()

    return progress
