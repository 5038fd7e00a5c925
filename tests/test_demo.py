"""``entroloss demo``: the metrics are computed right, training works and is reproducible,
and every backend trains to the same numbers from the same start."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from entroloss.tools import training
from entroloss.tools.progress import ProgressBar


def test_calibration_metrics_on_hand_made_predictions():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    y = np.array([0, 1, 1, 0])
    m = training.calibration(p, y, bins=10)
    assert m["accuracy"] == 0.75  # argmax ties go to class 0
    assert math.isclose(m["nll"], -np.mean(np.log([0.9, 0.4, 0.8, 0.5])))
    # bins: 0.9 -> correct, 0.6 -> wrong, 0.8 -> correct, 0.5 -> correct
    expected_ece = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.8) + abs(1 - 0.5)) / 4
    assert math.isclose(m["ece"], expected_ece)
    assert math.isclose(m["entropy"], np.mean(-np.sum(p * np.log(p), 1)))


def test_manual_backprop_matches_finite_differences():
    import array_api_compat.numpy as xp

    import entroloss as el

    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) for k, v in training.init_mlp(rng, 5, 4, 3).items()}
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)

    def total(params):
        return float(el.min_ent(training.mlp_forward(xp, params, x)[0], y))

    logits, cache = training.mlp_forward(xp, params, x)
    _, g = el.value_and_grad(el.min_ent, logits, y)
    grads = training.mlp_gradients(xp, params, x, cache, g["logits"])
    for name, value in params.items():
        fd = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            up = {k: v.copy() for k, v in params.items()}
            down = {k: v.copy() for k, v in params.items()}
            up[name][i] += 1e-6
            down[name][i] -= 1e-6
            fd[i] = (total(up) - total(down)) / 2e-6
        np.testing.assert_allclose(grads[name], fd, rtol=1e-5, atol=1e-8)


def _demo_json(*args):
    out = subprocess.run([sys.executable, "-m", "entroloss", "demo", "--json", *args],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_demo_trains_and_is_reproducible():
    first = _demo_json("--epochs", "4")
    assert [r["label"] for r in first["results"]] == [s.label for s in training.SETTINGS]
    for r in first["results"]:
        assert r["accuracy"] > 0.85, r  # 10 classes: chance is 0.1
        assert 0 <= r["ece"] <= 1 and r["nll"] > 0 and 0 <= r["entropy"] <= math.log(10)
    second = _demo_json("--epochs", "4")
    strip = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in d["results"]]
    assert strip(first) == strip(second)


@pytest.mark.parametrize("backend", ["array_api_strict", "torch", "jax"])
def test_every_backend_trains_to_the_same_numbers(backend):
    pytest.importorskip(backend)
    args = ("--epochs", "3", "--loss", "min_ent", "--loss", "focal")
    reference = _demo_json(*args)["results"]
    other = _demo_json(*args, "--backend", backend)["results"]
    for a, b in zip(reference, other, strict=True):
        assert a["loss"] == b["loss"]
        for key in ("accuracy", "nll", "ece", "entropy"):
            assert abs(a[key] - b[key]) < 5e-3, (key, a, b)


def test_unavailable_backend_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "entroloss", "demo", "--backend", "cupy"],
                         capture_output=True, text=True)
    if out.returncode == 0:
        pytest.skip("cupy with a GPU is available here")
    assert "cupy" in out.stderr and "not available" in out.stderr


class _Stream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


@pytest.mark.parametrize("terminal, enabled, shown", [
    (True, True, "\r[##........] a\r[##########] b\n"),  # redrawn in place
    (False, True, "line\n"),  # a log or a pipe: the plain lines only
    (True, False, ""), (False, False, ""),  # --json: silent
])
def test_progress_bar_redraws_on_a_terminal_and_logs_lines_elsewhere(terminal, enabled, shown):
    stream = _Stream(terminal)
    bar = ProgressBar(stream=stream, width=10, enabled=enabled)
    bar.draw(1, 4, "a")
    bar.log("line")
    bar.draw(4, 4, "b")
    bar.finish()
    assert stream.getvalue() == shown
