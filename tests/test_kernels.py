"""Every registered native kernel table computes what the array-API definitions compute.

``entroloss.backends.KERNEL_TABLES`` lists the libraries' tables; each field of
``entroloss._math.Kernels`` is one primitive. Each table's kernels are run next to the
definitions (``entroloss._math.GENERIC``) on the hard rows: masked classes down to a single
one left, a row of only -inf, +inf, NaN, and a class masked with float32's most negative
number, with positions in one and in two dimensions.
"""

from __future__ import annotations

import dataclasses
import math
import importlib

import numpy as np
import pytest

from entroloss import _math
from entroloss.backends import KERNEL_TABLES, kernels_for
from entroloss._math import primitives

# every field but scan, which says how the linear head loops rather than what it computes
FIELDS = [f.name for f in dataclasses.fields(_math.Kernels) if f.name != "scan"]
DTYPES = ("float64", "float32")
# the same formula, but a vectorised sum may round differently in the last bits
TOLERANCE = {"float64": dict(rtol=1e-12, atol=1e-300), "float32": dict(rtol=2e-6, atol=1e-30)}
# |z / CAP| < 1 on the finite rows: the slope 1 - t^2 is far from 0, where one ulp of tanh
# between two libraries would be a large relative difference
CAP = 3.0
# the caller's logits, which the backward keeps and caps again
NEVER_WRITE = {"soft_cap", "soft_cap_with_slope"}
CAP_FIELDS = ("soft_cap", "soft_cap_with_slope", "times_slope")


def _namespace(name: str):
    """(array-api-compat namespace, NumPy -> namespace, namespace -> NumPy)."""
    library = name.rsplit(".", 1)[-1]
    pytest.importorskip(library)
    xp = importlib.import_module(name)
    if library == "torch":
        import torch

        return xp, torch.from_numpy, lambda x: x.numpy()
    return xp, np.asarray, np.asarray


def _hard_rows(shape: tuple, dtype: str) -> dict:
    rng = np.random.default_rng(4)
    z = rng.normal(size=shape)
    rows = z.reshape(-1, shape[-1])
    rows[1, 2] = -np.inf
    rows[2, :4] = -np.inf  # one class left
    rows[3] = -np.inf  # nothing left
    rows[4, 0], rows[5, 3] = np.inf, np.nan
    rows[6, 1] = -3.4e38  # masked with float32's most negative number
    positions = shape[:-1]
    return {
        "z": z.astype(dtype),
        "index": rng.integers(0, shape[-1], size=positions + (1,)),
        "p_coef": rng.normal(size=positions + (1,)).astype(dtype),
        "onehot_coef": rng.normal(size=positions).astype(dtype),
        "log_p_coef": rng.normal(size=positions).astype(dtype),
    }


def _arguments(xp, data: dict) -> dict:
    """The inputs of each primitive, computed with the definitions."""
    z = data["z"]
    top, norm = primitives.row_stats(xp, z)
    finite = primitives.finite_log_p(xp, primitives.log_p(xp, z, top, norm))
    affine = (z, top, norm, data["p_coef"], data["index"], data["onehot_coef"])
    moved = xp.permute_dims(z, tuple(reversed(range(z.ndim))))  # not C-contiguous
    slope = primitives.soft_cap_with_slope(xp, z, CAP)[1]
    p = xp.reshape(xp.exp(finite), (-1, z.shape[-1]))  # rows (N, C), NaN rows included
    total = xp.ones((z.shape[-1], z.shape[-1]), dtype=z.dtype)
    return {
        "row_stats": [(z,)],
        "sum_exp_shifted": [(z, top)],
        "take_along_last": [(z, data["index"])],
        # log p with -inf, NaN and -3.4e38 (the hard rows)
        "nll_at_target": [(primitives.log_p(xp, z, top, norm), data["index"][..., 0])],
        "log_p": [(z, top, norm)],
        "finite_log_p": [(primitives.log_p(xp, z, top, norm),)],
        "sum_p_log_p": [(finite,)],
        "sum_p_by_level": [(finite, data["index"], -math.log(1e-4), -math.log1p(1e-4))],
        # and into z's own buffer (overwrite: the linear head's chunk)
        "softmax_affine": [affine, affine + (data["log_p_coef"],), affine + (None, True),
                           affine + (data["log_p_coef"], True)],
        "soft_cap": [(z, CAP), (moved, CAP)],
        "soft_cap_with_slope": [(z, CAP), (moved, CAP)],
        "times_slope": [(z, slope)],  # dz with inf and NaN, slope 0 where z is infinite
        "zero_rows": [(z, xp.isfinite(xp.sum(z, axis=-1)))],  # the inf and NaN rows zeroed
        "add_product": [(total, xp.matrix_transpose(p), p)],
    }


@pytest.mark.parametrize("shape", [(8, 5), (2, 8, 5)], ids=["rows", "2d-positions"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("namespace", sorted(KERNEL_TABLES))
def test_every_kernel_equals_its_definition_on_hard_rows(namespace, dtype, shape):
    table = kernels_for(_namespace(namespace)[0])
    assert isinstance(table, _math.Kernels) and table is not _math.GENERIC
    _check_table(namespace, table, dtype, shape, FIELDS)


def test_torch_cap_kernels_off_numpy_equal_their_definitions(monkeypatch):
    """On CPU the torch table caps through NumPy; on other devices and under torch.compile
    through torch's own ops, which this runs on CPU."""
    pytest.importorskip("torch")
    from entroloss.backends import torch_kernels

    monkeypatch.setattr(torch_kernels, "_through_numpy", lambda z: False)
    for dtype in DTYPES:
        _check_table("array_api_compat.torch", torch_kernels.KERNELS, dtype, (8, 5), CAP_FIELDS)


def _check_table(namespace: str, table, dtype: str, shape: tuple, fields) -> None:
    xp, to_xp, to_numpy = _namespace(namespace)
    data = {k: to_xp(v) for k, v in _hard_rows(shape, dtype).items()}
    with np.errstate(invalid="ignore", over="ignore"):  # the inf and NaN rows
        cases = _arguments(xp, data)
        assert sorted(cases) == sorted(FIELDS), "a primitive of Kernels has no case here"
        for name in fields:
            native = getattr(table, name)  # a field the table leaves out is the definition
            for args in cases[name]:
                # kernels may write into an argument (finite_log_p does): give them copies
                copies = tuple(to_xp(np.array(to_numpy(a))) if hasattr(a, "shape") else a
                               for a in args)
                want = getattr(_math.GENERIC, name)(xp, *args)
                expected = [to_numpy(w) for w in want] if isinstance(want, tuple) else to_numpy(want)
                got = native(xp, *copies)
                pairs = zip(got, expected, strict=True) if isinstance(got, tuple) else [(got, expected)]
                for a, b in pairs:
                    np.testing.assert_allclose(to_numpy(a), b, equal_nan=True,
                                               err_msg=f"{namespace} {name}", **TOLERANCE[dtype])
                if name in NEVER_WRITE or (name == "softmax_affine" and args[-1] is not True):
                    for copy, arg in zip(copies, args, strict=True):
                        if hasattr(arg, "shape"):
                            np.testing.assert_array_equal(to_numpy(copy), to_numpy(arg),
                                                          err_msg=f"{namespace} {name} wrote its input")


def test_a_table_names_only_known_primitives():
    with pytest.raises(TypeError, match="logsumexp"):
        _math.Kernels(logsumexp=lambda xp, z: z)


def test_namespaces_without_a_table_run_the_definitions():
    strict = pytest.importorskip("array_api_strict")
    assert kernels_for(strict) is _math.GENERIC


@pytest.mark.parametrize("shape", [(8, 5), (2, 8, 5)], ids=["rows", "2d-positions"])
def test_torch_kernels_in_row_blocks_equal_their_definitions(monkeypatch, shape):
    """torch's sum_p_log_p and softmax_affine take a large input a block of rows at a
    time (one temporary of a block's size): with blocks of three rows, the last one
    shorter, the same numbers on the hard rows as the definitions."""
    torch = pytest.importorskip("torch")
    from entroloss.backends import torch_kernels

    monkeypatch.setattr(torch_kernels, "BLOCK_ELEMENTS", 15)
    blocks = torch_kernels._row_blocks(torch.zeros(shape))
    assert blocks is not None and len(blocks) == -(-(len(np.zeros(shape).reshape(-1, 5))) // 3)
    for dtype in DTYPES:
        test_every_kernel_equals_its_definition_on_hard_rows("array_api_compat.torch", dtype, shape)


def test_registered_tables_loop_in_python():
    """``scan`` is chosen per call (JAX under tracing), never by a library's table."""
    for namespace in KERNEL_TABLES:
        assert kernels_for(_namespace(namespace)[0]).scan is None
    assert _math.GENERIC.scan is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_torch_autograd_table_equals_the_definitions(dtype):
    """The table torch's own autograd differentiates at small sizes (backends/torch.py):
    out of place, the same numbers as the definitions on the hard rows."""
    pytest.importorskip("torch")
    from entroloss.backends import torch_kernels

    table = torch_kernels.AUTOGRAD_KERNELS
    fields = [f for f in FIELDS if getattr(table, f) is not getattr(_math.GENERIC, f)]
    assert "row_stats" in fields and "sum_p_log_p" in fields
    _check_table("array_api_compat.torch", table, dtype, (8, 5), fields)
