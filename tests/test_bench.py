"""``entroloss bench`` runs and reports ratios; its baselines and the native kernels that
``_math`` may route to compute what they claim."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from entroloss import _math
from entroloss.tools import bench as _bench


def test_hand_written_baseline_is_cross_entropy_and_its_gradient():
    import entroloss as el

    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(7, 5)), rng.integers(0, 5, 7)
    value, grad = _bench.minimal_cross_entropy(np, z, y)
    ref_value, ref = el.value_and_grad(el.cross_entropy, z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(grad, ref["logits"], rtol=1e-12, atol=1e-15)


def test_native_torch_kernels_equal_the_generic_primitives():
    """torch's kernels for _math's primitives: the generic results, on rows with masked
    classes, a row of only -inf, and rows holding +inf and NaN."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    from entroloss.backends import torch as adapter

    inf, nan = math.inf, math.nan
    z = torch.randn(8, 5, dtype=torch.float64)
    z[1, 2] = z[2, :4] = -inf  # masked classes, down to a single one left
    z[3] = -inf  # nothing left
    z[4, 0], z[5, 3] = inf, nan
    z[6, 1] = -3.4e38  # masked with float32's most negative number
    for dtype in (torch.float64, torch.float32):
        zd = z.to(dtype)
        m = torch.amax(zd, dim=-1, keepdim=True)
        m = torch.where(m == -inf, 0.0, m)
        exact = dict(equal_nan=True, rtol=0, atol=0)
        # the same formula; float32 sums may differ in the last bit (vectorised)
        torch.testing.assert_close(adapter._sum_exp_shifted(xp, zd, m),
                                   _math._sum_exp_shifted(xp, zd, m), equal_nan=True)
        m, lt = _math._row_stats(xp, zd)
        log_p = _math._log_p(xp, zd, m, lt)
        torch.testing.assert_close(adapter._log_p(xp, zd, m, lt), log_p, **exact)
        finite = _math._finite_log_p(xp, log_p)
        torch.testing.assert_close(adapter._finite_log_p(xp, log_p.clone()), finite, **exact)
        torch.testing.assert_close(adapter._sum_p_log_p(xp, finite), _math._sum_p_log_p(xp, finite),
                                   equal_nan=True)
        alpha, beta, scale = (torch.randn(8, dtype=dtype) for _ in range(3))
        index = torch.randint(0, 5, (8, 1))
        torch.testing.assert_close(adapter._mass_off_target(xp, finite, index),
                                   _math._mass_off_target(xp, finite, index), equal_nan=True)
        for a, s in ((alpha[:, None], None), (alpha[:, None], scale)):
            torch.testing.assert_close(adapter._softmax_affine(xp, zd, m, lt, a, index, beta, s),
                                       _math._softmax_affine(xp, zd, m, lt, a, index, beta, s),
                                       equal_nan=True)


@pytest.mark.parametrize("shape", [(8, 5), (2, 8, 5)])
def test_native_numpy_kernels_equal_the_generic_primitives(shape):
    """NumPy's in-place kernels: the generic results, with the same special rows, and for
    positions in more than one dimension."""
    import array_api_compat.numpy as xp

    from entroloss.backends import explicit as adapter

    rng = np.random.default_rng(4)
    z = rng.normal(size=shape)
    rows = z.reshape(-1, shape[-1])
    rows[1, 2] = -np.inf
    rows[2, :4] = -np.inf
    rows[3] = -np.inf
    rows[4, 0], rows[5, 3] = np.inf, np.nan
    rows[6, 1] = -3.4e38  # masked with float32's most negative number
    index = rng.integers(0, shape[-1], size=shape[:-1] + (1,))
    alpha, beta, scale = (rng.normal(size=shape[:-1]) for _ in range(3))
    with np.errstate(invalid="ignore"):  # the inf and NaN rows
        for dtype in (np.float64, np.float32):
            zd = z.astype(dtype)
            m, lt = _math._row_stats(xp, zd)
            np.testing.assert_allclose(adapter._sum_exp_shifted(xp, zd, m),
                                       _math._sum_exp_shifted(xp, zd, m), rtol=1e-6)
            log_p = _math._log_p(xp, zd, m, lt)
            np.testing.assert_array_equal(adapter._log_p(xp, zd, m, lt), log_p)
            finite = _math._finite_log_p(xp, log_p)
            np.testing.assert_array_equal(adapter._finite_log_p(xp, log_p.copy()), finite)
            for name, args in (("_sum_p_log_p", (finite,)), ("_mass_off_target", (finite, index))):
                np.testing.assert_allclose(getattr(adapter, name)(xp, *args),
                                           getattr(_math, name)(xp, *args), rtol=1e-6)
            for s in (None, scale.astype(dtype)):
                a = alpha.astype(dtype)[..., None]
                np.testing.assert_allclose(
                    adapter._softmax_affine(xp, zd, m, lt, a, index, beta.astype(dtype), s),
                    _math._softmax_affine(xp, zd, m, lt, a, index, beta.astype(dtype), s),
                    rtol=1e-6)


def test_bench_cli_quick_json():
    out = subprocess.run(
        [sys.executable, "-m", "entroloss", "bench", "--backend", "numpy", "--shape", "64x8",
         "--repeats", "3", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    rows = data["rows"]
    assert {r["candidate"] for r in rows} == {"hand-written"} | {f"el.{n}" for n in _bench.LOSSES}
    base = [r for r in rows if r["candidate"] == "hand-written"][0]
    assert base["step_ratio"] == 1.0 and base["forward_ratio"] == 1.0
    for r in rows:
        assert r["step_ms"] > 0 and r["forward_ms"] > 0
        assert math.isclose(r["step_ratio"], r["step_ms"] / base["step_ms"], rel_tol=1e-9)
    assert data["machine"]["numpy"] == np.__version__
