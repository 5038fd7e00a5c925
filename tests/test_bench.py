"""``entroloss bench`` runs and reports ratios of every loss; its hand-written baseline
computes what it claims; the memory probe measures in a process of its own."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from entroloss._losses import LOSSES
from entroloss.tools import bench as _bench


def test_hand_written_baseline_is_cross_entropy_and_its_gradient():
    import entroloss as el

    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(7, 5)), rng.integers(0, 5, 7)
    value, grad = _bench.minimal_cross_entropy(np, z, y)
    ref_value, ref = el.value_and_grad(el.cross_entropy, z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref["logits"], rtol=1e-12, atol=1e-15)


def test_bench_cli_quick_json():
    out = subprocess.run(
        [sys.executable, "-m", "entroloss", "bench", "--backend", "numpy", "--shape", "64x8",
         "--repeats", "3", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    rows = data["rows"]
    assert {r["candidate"] for r in rows} == {"hand-written"} | {f"el.{loss.name}" for loss in LOSSES}
    base = [r for r in rows if r["candidate"] == "hand-written"][0]
    assert base["step_ratio"] == 1.0 and base["forward_ratio"] == 1.0
    for r in rows:
        assert r["step_ms"] > 0 and r["forward_ms"] > 0
        assert math.isclose(r["step_ratio"], r["step_ms"] / base["step_ms"], rel_tol=1e-9)
    assert data["machine"]["numpy"] == np.__version__


def test_memory_probe_measures_every_candidate_in_a_fresh_process():
    """One figure per candidate, focal and the chunked losses among them. The gradient
    alone is one logits' worth of bytes; the lower bound leaves room for freed pages that
    were already resident before the call."""
    pytest.importorskip("torch")
    if not sys.platform.startswith("linux"):
        pytest.skip("the probe reads /proc/self/status")
    candidates = ("F.cross_entropy", "el.focal", "el.min_ent chunks of 128")
    figures = _bench.peak_extra_memory(512, 1000, candidates, runs=1)
    assert list(figures) == list(candidates)
    for which, extra in figures.items():
        assert 0.5 < extra < 8, (which, extra)
