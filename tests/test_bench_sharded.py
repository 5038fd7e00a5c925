"""``entroloss bench --sharded`` (``entroloss.tools.bench_sharded``, ``benchmarks/sharded.py``)
at a tiny shape: its ranks (gloo on 127.0.0.1, uneven slices of the classes) compute the
one process's loss, and every figure comes out. Only that: no timed assertion."""

from __future__ import annotations

import math
import sys

import pytest

from tests.helpers.distributed import needs_gloo

pytestmark = needs_gloo


def test_sharded_ranks_compute_the_one_process_loss_and_every_figure():
    """Every candidate (the linear heads of cross entropy and MIN-ENT, the plain cross
    entropy) over 1 and 3 ranks (41 classes: slices of 14, 14 and 13): the loss of the
    ranks is the one process's (the calls of docs/tensor-parallel.md's torch example)."""
    from entroloss.tools import bench_sharded

    rows = bench_sharded.run((16, 8, 41), ranks=(1, 3), repeats=2, memory=False)
    assert [(r.candidate, r.ranks, r.sharded) for r in rows] == [
        (k, p, s) for k in bench_sharded.CANDIDATES for p, s in ((1, False), (1, True), (3, True))]
    for r in rows:
        one = next(o for o in rows if o.candidate == r.candidate and not o.sharded)
        assert math.isclose(r.value, one.value, rel_tol=1e-5), (r, one)
        assert r.step_s > 0 and r.time_ratio > 0 and r.peak_mib is None
    table = bench_sharded.markdown(rows)
    assert "3, class_group" in table and "el.linear_min_ent(h, W[a:b], y, bias=b[a:b])" in table


def test_sharded_memory_figure_in_fresh_processes():
    from entroloss.tools import bench_sharded

    if not sys.platform.startswith("linux"):
        pytest.skip("the memory probe reads /proc/self/status")
    # logits of 16 MiB: one process holds their gradient (and a temporary) beyond them;
    # each of 2 ranks half of that (docs/tensor-parallel.md measures 0.50)
    rows = bench_sharded.run((256, 8, 16384), ranks=(2,), candidates=("cross_entropy",),
                             repeats=1)
    one, two = (next(r for r in rows if r.sharded == s) for s in (False, True))
    assert one.peak_mib >= 16, rows
    assert two.memory_ratio < 0.75, rows


def test_bench_sharded_command_line_refuses_without_torch_distributed(monkeypatch, capsys):
    """``entroloss bench --sharded`` is wired to the harness (its figures are the tests
    above); where torch.distributed has no gloo it says so and exits 2."""
    import torch.distributed as dist

    from entroloss.__main__ import main

    monkeypatch.setattr(dist, "is_gloo_available", lambda: False)
    assert main(["bench", "--sharded", "--head", "8x4x16"]) == 2
    assert "needs torch.distributed with gloo" in capsys.readouterr().err
