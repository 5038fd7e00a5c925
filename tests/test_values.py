"""Loss values against the independent float64 reference, every option, every backend."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses
from entroloss.tools import reference
from tests.helpers.assertions import assert_close
from tests.helpers.cases import GRID_ARGS, GRID_IDS, LOSSES, draw, on_backend, rounded
from tests.helpers.platforms import backend_dtype_params


@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
@pytest.mark.parametrize("backend, dtype", backend_dtype_params())
def test_value_matches_reference(backend, args, dtype):
    case = draw(*args)
    logits, target, options = on_backend(case, backend, dtype)
    actual = getattr(el, case.loss)(logits, target, **options)
    assert_close(actual, rounded(case, dtype, backend).expected(), backend, dtype)


def test_reference_is_what_it_claims():
    """Spot checks of the reference itself against hand-computed numbers."""
    z = np.log(np.array([[1.0, 2.0, 5.0]]))  # p = (0.125, 0.25, 0.625)
    p = np.array([0.125, 0.25, 0.625])
    y = np.array([2])
    assert np.isclose(reference.loss("cross_entropy", z, y), -np.log(0.625))
    assert np.isclose(reference.loss("adaptive_ce", z, y), -(1 - 0.625) * np.log(0.625))
    assert np.isclose(reference.loss("focal", z, y), -(1 - 0.625) ** 2 * np.log(0.625))
    assert np.isclose(reference.loss("focal", z, y, gamma=0.5), -(1 - 0.625) ** 0.5 * np.log(0.625))
    assert np.isclose(
        reference.loss("min_ent", z, y), -np.log(0.625) - np.sum(p * np.log(p))
    )
    rev = -(p[2] * np.log(1 + 1e-6) + (p[0] + p[1]) * np.log(1e-6))
    assert np.isclose(reference.loss("mix_ent", z, y), -np.log(0.625) + rev)
    assert np.isclose(reference.loss("mix_ent", z, y, ce_weight=0.5, reverse_weight=2.0,
                                     ce_base=2.0, reverse_base=10.0),
                      -0.5 * np.log(0.625) / np.log(2) + 2 * rev / np.log(10))
    assert np.isclose(reference.loss("cross_entropy", z, y, base=2.0), -np.log2(0.625))
    w = [1.0, 1.0, 3.0]
    assert np.isclose(reference.loss("cross_entropy", z, y, weight=w, reduction="sum"),
                      -3 * np.log(0.625))
    # "mean" divides by w_y
    assert np.isclose(reference.loss("cross_entropy", z, y, weight=w), -np.log(0.625))


@pytest.mark.parametrize("loss", LOSSES)
def test_reference_takes_the_public_keywords_and_defaults(loss):
    """The reference's keywords and defaults are those of the public function: the same
    call means the same loss (``entroloss verify`` and the tests rely on it)."""
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(4, 3)), rng.integers(0, 3, size=4)
    parameters = inspect.signature(getattr(el, loss)).parameters
    defaults = {name: p.default for name, p in parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert reference.loss(loss, z, y, **defaults) == reference.loss(loss, z, y)
    assert np.isclose(reference.loss(loss, z, y), float(getattr(el, loss)(z, y)), rtol=1e-12)
    resolved = reference.resolve_options(loss)
    for name, default in defaults.items():
        slot = _losses.by_name(loss).scalars.get(name)
        if slot is not None:
            assert resolved[slot] == default, name
        elif name in resolved:
            assert resolved[name] == default, name
    with pytest.raises(TypeError, match="unexpected"):
        reference.loss(loss, z, y, not_an_option=1.0)
    if "gamma" not in defaults:
        with pytest.raises(TypeError, match="gamma"):
            reference.loss(loss, z, y, gamma=2.0)


def test_reference_gradient_is_central_differences_of_the_reference():
    """The cross entropy's gradient is ``p - onehot`` (``sum``); a -inf logit gets 0; and
    ``central_differences`` is exact to its step on a cubic."""
    rng = np.random.default_rng(2)
    z, y = rng.normal(size=(5, 4)), rng.integers(0, 4, size=5)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(reference.gradient("cross_entropy", z, y, reduction="sum"),
                               p - np.eye(4)[y], rtol=1e-7, atol=1e-9)
    z[0, 1], y[0] = -np.inf, 0  # a masked class that is not the target: a finite loss
    g = reference.gradient("min_ent", z, y, entropy_weight=0.5)
    assert g[0, 1] == 0 and np.all(np.isfinite(g)) and np.all(g[1:] != 0)
    x = np.array([0.5, -2.0, 3.0])
    np.testing.assert_allclose(reference.central_differences(lambda v: np.sum(v ** 3), x, step=1e-3),
                               3 * x ** 2 + 1e-6, rtol=1e-9)
    g = reference.central_differences(lambda v: np.sum(v ** 2), x, where=x > 0)
    assert g[1] == 0
    np.testing.assert_allclose(g, [1.0, 0.0, 6.0], rtol=1e-9)

@pytest.mark.parametrize("loss", LOSSES)
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


@pytest.mark.parametrize("backend, dtype", backend_dtype_params(["float16"]))
def test_half_precision_is_computed_in_float32(backend, dtype):
    rng = np.random.default_rng(3)
    z16 = rng.normal(scale=3.0, size=(64, 50)).astype(np.float16)
    y = rng.integers(0, 50, size=64)
    actual = el.cross_entropy(backend.asarray(z16, "float16"), backend.asarray(y))
    expected = reference.loss("cross_entropy", z16.astype(np.float64), y)
    assert_close(actual, expected, backend, "float16")
