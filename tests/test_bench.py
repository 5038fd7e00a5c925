"""``entroloss bench`` runs and reports ours against the native cross entropy and the
user's baseline; the baselines compute the losses they stand for (the same values and
gradients as ours, with the same options); the memory probe measures in a process of its own."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import entroloss as el
from entroloss._losses import CROSS_ENTROPY, FOCAL, LOSSES
from entroloss.tools import baselines as _baselines
from entroloss.tools import bench as _bench

NAMES = [loss.name for loss in LOSSES]


def _data(n=9, c=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c)) * 2, rng.integers(0, c, n)


def _ours(loss, z, y):
    return el.value_and_grad(getattr(el, loss.name), z, y, **_baselines.timed_options(loss))


def test_timed_options_are_the_registry_examples_less_the_bases():
    options = {loss.name: _baselines.timed_options(loss) for loss in LOSSES}
    assert options == {"cross_entropy": {}, "min_ent": {"entropy_weight": 0.5},
                       "mix_ent": {"reverse_weight": 0.3, "eps": 1e-4}, "adaptive_ce": {},
                       "focal": {"gamma": 2.0}, "poly1": {"epsilon": 2.0}}
    assert set(_baselines.USER_BASELINES) == set(NAMES)


def test_hand_written_baseline_is_cross_entropy_and_its_gradient():
    z, y = _data(7, 5)
    value, grad = _baselines.minimal_cross_entropy(np, z, y)
    ref_value, ref = el.value_and_grad(el.cross_entropy, z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref["logits"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", LOSSES, ids=NAMES)
def test_hand_written_numpy_baselines_are_our_losses_and_gradients(loss):
    z, y = _data()
    value, grad = _baselines.hand_written(np, loss, z, y)
    ref_value, ref = _ours(loss, z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-10)
    np.testing.assert_allclose(_baselines.hand_written(np, loss, z, y, grad=False), ref_value, rtol=1e-10)
    np.testing.assert_allclose(grad, ref["logits"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES, ids=NAMES)
def test_torch_compositions_are_our_losses_and_gradients(loss):
    torch = pytest.importorskip("torch")
    z, y = _data()
    zt = torch.tensor(z, requires_grad=True)
    value = _baselines.torch_user_baseline(loss)(zt, torch.tensor(y))
    value.backward()
    ref_value, ref = _ours(loss, z, y)
    rtol = 1e-10  # the one-hot target is built in the logits' dtype
    np.testing.assert_allclose(value.item(), ref_value, rtol=rtol)
    np.testing.assert_allclose(zt.grad.numpy(), ref["logits"], rtol=100 * rtol, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES, ids=NAMES)
def test_jnp_compositions_are_our_losses_and_gradients(loss):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    z, y = _data()
    zj, yj = jnp.asarray(z, jnp.float32), jnp.asarray(y)
    fn = _baselines.jax_user_baseline(loss)
    value, grad = jax.jit(jax.value_and_grad(fn))(zj, yj)
    z32 = np.asarray(zj, np.float64)  # the same float32 inputs
    ref_value, ref = _ours(loss, z32, y)
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad, np.float64), ref["logits"], rtol=1e-4, atol=1e-6)


def _check_rows(rows, platforms):
    assert {r["backend"] for r in rows} == set(platforms)
    keys = {"backend", "shape", "dtype", "loss", "mode", "options", "ours", "native", "user",
            "ours_forward_us", "ours_step_us", "native_forward_us", "native_step_us",
            "user_forward_us", "user_step_us", "forward_vs_native", "step_vs_native",
            "forward_vs_user", "step_vs_user", "ops", "floor_us", "floor_gbps", "step_vs_floor"}
    for r in rows:
        assert keys <= set(r), keys - set(r)
        for k in ("ours_forward_us", "ours_step_us", "native_forward_us", "native_step_us",
                  "user_forward_us", "user_step_us", "forward_vs_native", "step_vs_native",
                  "forward_vs_user", "step_vs_user"):
            assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert math.isclose(r["step_vs_native"], r["ours_step_us"] / r["native_step_us"], rel_tol=1e-9)
        assert math.isclose(r["forward_vs_user"], r["ours_forward_us"] / r["user_forward_us"],
                            rel_tol=1e-9)
        assert r["options"] == _baselines.timed_options(next(d for d in LOSSES if d.name == r["loss"]))
    for platform in platforms:
        assert {r["loss"] for r in rows if r["backend"] == platform} == set(NAMES)


def test_bench_cli_json_numpy():
    out = subprocess.run(
        [sys.executable, "-m", "entroloss", "bench", "--backend", "numpy", "--shape", "64x8",
         "--repeats", "3", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    rows = data["rows"]
    _check_rows(rows, ["numpy"])
    assert data["user_baselines"] == _baselines.USER_BASELINES
    for r in rows:
        assert r["native"] == "hand-written cross entropy" and r["ops"] is None
        assert r["mode"] == "eager" and r["shape"] == [64, 8]
    ce = next(r for r in rows if r["loss"] == "cross_entropy")
    assert ce["user"] == ce["native"] and ce["native_step_us"] == ce["user_step_us"]
    assert data["machine"]["numpy"] == np.__version__


def test_bench_torch_counts_dispatched_ops_and_times_the_floor():
    pytest.importorskip("torch")
    rows, _ = _bench.run("torch", "cpu", shapes=((32, 7),), repeats=3, budget_s=2, chunk_size=16)
    rows = [_bench.asdict(r) for r in rows]
    _check_rows(rows, ["torch-cpu"])
    assert {r["mode"] for r in rows} == {"eager", "eager, chunks of 16"}
    for r in rows:
        assert set(r["ops"]) == {"ours", "native", "user"}
        for counts in r["ops"].values():
            assert set(counts) == {"forward", "step"}
            assert all(type(v) is int and v > 0 for v in counts.values())
            assert counts["step"] > counts["forward"]
        assert r["native"] == "F.cross_entropy"
        assert r["floor_us"] > 0 and r["floor_gbps"] > 0 and r["step_vs_floor"] > 0
    # F.cross_entropy: log_softmax + nll_loss forward, a handful more with the backward
    native = rows[0]["ops"]["native"]
    assert native["forward"] <= 4 and native["step"] <= 12, native


def test_count_dispatched_ops_counts_what_runs():
    torch = pytest.importorskip("torch")
    z = torch.randn(3, 4)
    assert _bench.count_dispatched_ops(lambda: z.exp()) == 1
    assert _bench.count_dispatched_ops(lambda: (z.exp() + 1).sum()) == 3


@pytest.mark.slow
def test_bench_torch_compiled_rows():
    pytest.importorskip("torch")
    rows, _ = _bench.run("torch", "cpu", shapes=((32, 7),), repeats=3, budget_s=2, compiled=True,
                         losses=(CROSS_ENTROPY, FOCAL), compiled_losses=(FOCAL,))
    compiled = [r for r in rows if r.mode == "compiled"]
    assert [r.loss for r in compiled] == ["focal"]
    assert compiled[0].native == "compiled F.cross_entropy" and compiled[0].ops is None
    assert compiled[0].user == "compiled torch focal" and compiled[0].step_vs_user > 0


def test_bench_table_shows_both_ratios():
    rows, _ = _bench.run("numpy", None, shapes=((16, 4),), repeats=3, budget_s=1)
    text = _bench.table(rows, [("cupy", "not installed")])
    assert "f+b/CE" in text and "f+b/user" in text and "skipped cupy" in text
    assert all(loss in text for loss in NAMES)


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
