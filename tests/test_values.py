"""Loss values against the independent float64 reference, every option, every backend."""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
import reference
from cases import GRID_ARGS, GRID_IDS, draw, on_backend, rounded
from conftest import assert_close


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_value_matches_reference(backend, args, dtype):
    if dtype not in backend.dtypes:
        pytest.skip(f"{backend.id} has no {dtype}")
    case = draw(*args)
    logits, target, options = on_backend(case, backend, dtype)
    actual = getattr(el, case.loss)(logits, target, **options)
    seen = rounded(case, dtype, backend)
    expected = reference.loss(seen.logits, seen.target, **seen.reference_kwargs())
    assert_close(actual, expected, backend, dtype)


def test_reference_is_what_it_claims():
    """Spot checks of the reference itself against hand-computed numbers."""
    z = np.log(np.array([[1.0, 2.0, 5.0]]))  # p = (0.125, 0.25, 0.625)
    p = np.array([0.125, 0.25, 0.625])
    y = np.array([2])
    assert np.isclose(reference.loss(z, y), -np.log(0.625))
    assert np.isclose(reference.loss(z, y, kind="adaptive_ce"), -(1 - 0.625) * np.log(0.625))
    assert np.isclose(
        reference.loss(z, y, kind="min_ent"), -np.log(0.625) - np.sum(p * np.log(p))
    )
    rev = -(p[2] * np.log(1 + 1e-6) + (p[0] + p[1]) * np.log(1e-6))
    assert np.isclose(reference.loss(z, y, kind="mix_ent"), -np.log(0.625) + rev)
    w = [1.0, 1.0, 3.0]
    assert np.isclose(reference.loss(z, y, weight=w, reduction="sum"), -3 * np.log(0.625))
    assert np.isclose(reference.loss(z, y, weight=w), -np.log(0.625))  # mean divides by w_y


@pytest.mark.parametrize("loss", ["cross_entropy", "min_ent", "mix_ent", "adaptive_ce", "focal"])
def test_axis_moves_with_the_class_axis(backend, loss):
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4, 3, 5))
    y = rng.integers(0, 5, size=(4, 3))
    fn = getattr(el, loss)
    last = fn(backend.asarray(z), backend.asarray(y), reduction="none")
    first = fn(backend.asarray(np.moveaxis(z, -1, 0)), backend.asarray(y), axis=0, reduction="none")
    middle = fn(backend.asarray(np.moveaxis(z, -1, 1)), backend.asarray(y), axis=-2, reduction="none")
    assert_close(first, backend.to_numpy(last), backend, "float64")
    assert_close(middle, backend.to_numpy(last), backend, "float64")


def test_half_precision_is_computed_in_float32(backend):
    if not hasattr(backend.xp, "float16"):
        pytest.skip(f"{backend.id} has no float16")
    rng = np.random.default_rng(3)
    z16 = rng.normal(scale=3.0, size=(64, 50)).astype(np.float16)
    y = rng.integers(0, 50, size=64)
    actual = el.cross_entropy(backend.asarray(z16, "float16"), backend.asarray(y))
    expected = reference.loss(z16.astype(np.float64), y)
    assert_close(actual, expected, backend, "float16")
