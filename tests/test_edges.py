"""The edge contract: NaN propagates, -inf-masked classes stay finite, empty and
all-ignored batches give NaN under "mean" and 0 under "sum"."""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from entroloss.tools import reference
from tests.helpers.cases import LOSSES


@pytest.fixture(params=LOSSES)
def loss(request):
    return getattr(el, request.param)


def _np(backend, x):
    return backend.to_numpy(x)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns on inf - inf
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_and_plus_inf_propagate_as_nan(backend, loss, bad):
    z = np.random.default_rng(0).normal(size=(3, 4))
    z[1, 2] = bad
    y = np.array([0, 1, 3])
    logits, target = backend.asarray(z), backend.asarray(y)
    per_row = _np(backend, loss(logits, target, reduction="none"))
    assert np.isnan(per_row[1]) and np.all(np.isfinite(per_row[[0, 2]]))
    assert np.isnan(_np(backend, loss(logits, target)))
    _, grads = el.value_and_grad(loss, logits, target, reduction="none")
    g = _np(backend, grads["logits"])
    assert np.all(np.isnan(g[1])) and np.all(np.isfinite(g[[0, 2]]))


def _masked_case():
    z = np.random.default_rng(1).normal(size=(5, 6))
    z[0, 1] = z[0, 3] = -np.inf  # the target's neighbours
    z[1, :5] = -np.inf  # all but one class, and that one is the target
    z[2, 0] = -np.inf
    z[3] = [-np.inf, 4.0, -np.inf, -np.inf, -np.inf, 2.0]
    y = np.array([2, 5, 3, 1, 0])
    soft = np.zeros((5, 6))
    soft[np.arange(5), y] = 0.7
    soft[np.arange(5), (y + 2) % 6] = 0.3
    soft[1] = [0, 0, 0, 0, 0, 1.0]
    soft[3] = [0, 0.5, 0, 0, 0, 0.5]
    return z, y, soft


@pytest.mark.parametrize("kind", ["index", "soft"])
def test_masked_classes_give_finite_values_and_gradients(backend, loss, kind):
    z, y, soft = _masked_case()
    target = y if kind == "index" else soft
    logits = backend.asarray(z)
    options = {"weight": backend.asarray(np.array([1.0, 0.0, 2.0, 1.0, 0.5, 1.0]))}
    value, grads = el.value_and_grad(loss, logits, backend.asarray(target), reduction="none",
                                     **options)
    value, g = _np(backend, value), _np(backend, grads["logits"])
    assert np.all(np.isfinite(value)), value
    assert np.all(np.isfinite(g)), g
    assert np.all(g[np.isinf(z)] == 0)  # a masked class has no gradient
    expected = reference.loss(loss.__name__, z, target, reduction="none",
                              weight=[1.0, 0.0, 2.0, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)


def test_target_on_a_masked_class_is_infinite(backend):
    z = np.array([[0.0, -np.inf, 1.0]])
    logits, target = backend.asarray(z), backend.asarray(np.array([1]))
    assert _np(backend, el.cross_entropy(logits, target)) == np.inf
    # label smoothing puts mass on the masked class: +inf as well, never NaN
    ok = backend.asarray(np.array([0]))
    assert _np(backend, el.cross_entropy(logits, ok, label_smoothing=0.1)) == np.inf
    assert np.isfinite(_np(backend, el.min_ent(logits, ok)))
    assert np.isfinite(_np(backend, el.mix_ent(logits, ok)))


def test_entropy_of_masked_logits(backend):
    z = backend.asarray(np.array([[0.0, -np.inf, 0.0], [-np.inf, 3.0, -np.inf]]))
    np.testing.assert_allclose(_np(backend, el.entropy(z)), [math.log(2), 0.0], atol=1e-15)
    p = _np(backend, el.softmax(z))
    np.testing.assert_allclose(p, [[0.5, 0, 0.5], [0, 1, 0]], atol=1e-15)


@pytest.mark.parametrize("kind", ["index", "soft"])
def test_empty_batch(backend, loss, kind):
    logits = backend.asarray(np.zeros((0, 4)))
    target = backend.asarray(np.zeros((0,), dtype=np.int64) if kind == "index" else np.zeros((0, 4)))
    assert np.isnan(_np(backend, loss(logits, target)))
    assert _np(backend, loss(logits, target, reduction="sum")) == 0
    assert tuple(loss(logits, target, reduction="none").shape) == (0,)
    value, grads = el.value_and_grad(loss, logits, target, reduction="sum")
    assert tuple(grads["logits"].shape) == (0, 4)


def test_all_ignored_batch(backend, loss):
    logits = backend.asarray(np.random.default_rng(2).normal(size=(3, 4)))
    target = backend.asarray(np.array([-1, -1, -1]))
    assert np.isnan(_np(backend, loss(logits, target, ignore_index=-1)))
    assert _np(backend, loss(logits, target, ignore_index=-1, reduction="sum")) == 0
    _, grads = el.value_and_grad(loss, logits, target, ignore_index=-1, reduction="sum")
    assert np.all(_np(backend, grads["logits"]) == 0)


def test_ignored_positions_contribute_nothing(backend, loss):
    z = np.random.default_rng(4).normal(size=(4, 3))
    z[1] = np.nan  # even NaN logits at an ignored position do not leak
    y = np.array([0, 7, 2, 1])
    logits, target = backend.asarray(z), backend.asarray(y)
    kept = loss(backend.asarray(z[[0, 2, 3]]), backend.asarray(y[[0, 2, 3]]))
    np.testing.assert_allclose(_np(backend, loss(logits, target, ignore_index=7)),
                               _np(backend, kept), rtol=1e-12)
    _, grads = el.value_and_grad(loss, logits, target, ignore_index=7)
    assert np.all(_np(backend, grads["logits"])[1] == 0)


def test_saturated_softmax_is_finite(backend, loss):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    y = np.array([1, 2])
    value, grads = el.value_and_grad(loss, backend.asarray(z), backend.asarray(y), reduction="none")
    assert np.all(np.isfinite(_np(backend, value)))
    assert np.all(np.isfinite(_np(backend, grads["logits"])))
    np.testing.assert_allclose(_np(backend, value),
                               reference.loss(loss.__name__, z, y, reduction="none"), rtol=1e-12)


def test_focal_below_one_stays_finite_as_p_goes_to_one(backend):
    # p_y -> 1: (1-p)^(gamma-1) blows up but multiplies log p -> 0
    for gap in [5.0, 20.0, 40.0, 800.0]:
        z = backend.asarray(np.array([[gap, 0.0, 0.0]]))
        y = backend.asarray(np.array([0]))
        for gamma in [0.25, 0.5, 0.9]:
            _, grads = el.value_and_grad(el.focal, z, y, gamma=gamma)
            g = _np(backend, grads["logits"])
            assert np.all(np.isfinite(g)), (gap, gamma, g)
            assert np.all(np.abs(g) <= 2)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_unchecked_out_of_range_index_is_nan_not_wrong(backend, loss, smoothing):
    """validate=False skips the data checks; a bad index then gives NaN, never a number."""
    logits = backend.asarray(np.zeros((3, 4)))
    target = backend.asarray(np.array([1, 9, -3]))
    out = _np(backend, loss(logits, target, validate=False, reduction="none",
                            label_smoothing=smoothing, ignore_index=-3))
    assert np.isfinite(out[0]) and np.isnan(out[1]) and out[2] == 0
    _, grads = el.value_and_grad(loss, logits, target, validate=False, ignore_index=-3,
                                 reduction="sum", label_smoothing=smoothing)
    g = _np(backend, grads["logits"])
    assert np.all(np.isfinite(g[0])) and np.all(np.isnan(g[1])) and np.all(g[2] == 0)


def test_a_row_with_every_class_masked(backend, loss):
    """The target necessarily has mass on a masked class: +inf, never NaN."""
    z = np.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, 2.0]])
    out = _np(backend, loss(backend.asarray(z), backend.asarray(np.array([0, 1])), reduction="none"))
    assert out[0] == np.inf and np.isfinite(out[1])
    assert np.all(_np(backend, el.log_softmax(backend.asarray(z)))[0] == -np.inf)
    assert _np(backend, el.entropy(backend.asarray(z)))[0] == 0
