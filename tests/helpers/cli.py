"""Running ``python -m entroloss`` as a user does, and a package whose math is wrong."""

from __future__ import annotations

import os
import subprocess
import sys

# A sitecustomize that nudges the shared forward by 1e-3: every check must then fail.
_NUDGED_FORWARD = (
    "from entroloss import _math\n"
    "_forward = _math.forward\n"
    "def forward(*a, **k):\n"
    "    value, res = _forward(*a, **k)\n"
    "    return value * 1.001, res\n"
    "_math.forward = forward\n"
)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entroloss", *args], capture_output=True,
                          text=True, env=env)


def nudged_math_env(folder) -> dict:
    """An environment in which the installed package's forward is off by 1e-3."""
    (folder / "sitecustomize.py").write_text(_NUDGED_FORWARD)
    return dict(os.environ, PYTHONPATH=str(folder))
