"""Identities between the losses, checked on every backend (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses
from tests.helpers.assertions import assert_close
from tests.helpers.cases import LOSSES

RNG = np.random.default_rng(20261122)
Z = RNG.normal(scale=2.0, size=(7, 5))
Y = RNG.integers(0, 5, size=7)
T = RNG.dirichlet(np.full(5, 0.7), size=7)
W = RNG.uniform(0.3, 2.0, size=5)
OPTION_SETS = [
    {},
    {"weight": W},
    {"label_smoothing": 0.2},
    {"weight": W, "label_smoothing": 0.1, "reduction": "sum"},
    {"reduction": "none"},
]


def _on(backend, options):
    return {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _np(backend, x):
    return backend.to_numpy(x)


@pytest.fixture(params=["index", "soft"])
def data(request, backend):
    target = Y if request.param == "index" else T
    return backend.asarray(Z), backend.asarray(target)


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "-".join(o) or "plain")
def test_regularizers_switched_off_give_cross_entropy(backend, data, options):
    z, t = data
    opts = _on(backend, options)
    ce = _np(backend, el.cross_entropy(z, t, **opts))
    for definition in _losses.LOSSES:  # every regularizer of the registry, weight 0
        off = {s.name: 0.0 for s in definition.parameters if s.slot == "reg_weight"}
        if off:
            assert_close(getattr(el, definition.name)(z, t, **off, **opts), ce, backend, "float64")
    assert_close(el.focal(z, t, gamma=0.0, **opts), ce, backend, "float64")


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "-".join(o) or "plain")
def test_adaptive_is_focal_gamma_one(backend, data, options):
    z, t = data
    opts = _on(backend, options)
    focal = _np(backend, el.focal(z, t, gamma=1.0, **opts))
    assert_close(el.adaptive_ce(z, t, **opts), focal, backend, "float64")


def test_adaptive_is_linearly_weighted_log_likelihood(backend):
    p = np.exp(Z) / np.exp(Z).sum(-1, keepdims=True)
    p_y = p[np.arange(len(Y)), Y]
    expected = -(1 - p_y) * np.log(p_y)
    actual = el.adaptive_ce(backend.asarray(Z), backend.asarray(Y), reduction="none")
    assert_close(actual, expected, backend, "float64")


def test_reverse_term_is_entropy_plus_kl(backend, data):
    """R = H(p) + KL(p || q + eps): mix_ent - cross_entropy isolates R."""
    z, t = data
    eps = 1e-3
    reverse = _np(backend, el.mix_ent(z, t, eps=eps, reduction="none")) - _np(
        backend, el.cross_entropy(z, t, reduction="none")
    )
    p = np.exp(Z - Z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = T if _np(backend, t).ndim == 2 else np.eye(5)[Y]
    kl = np.sum(p * (np.log(p) - np.log(q + eps)), axis=-1)
    h = _np(backend, el.entropy(z))
    np.testing.assert_allclose(reverse, h + kl, rtol=1e-10)


def test_min_ent_adds_the_entropy(backend, data):
    z, t = data
    extra = _np(backend, el.min_ent(z, t, reduction="none")) - _np(
        backend, el.cross_entropy(z, t, reduction="none")
    )
    np.testing.assert_allclose(extra, _np(backend, el.entropy(z)), rtol=1e-10)


def test_entropy_lies_between_zero_and_log_classes(backend):
    z = np.concatenate([Z, np.zeros((1, 5)), np.array([[50.0, -50, -50, -50, -50]])])
    h = _np(backend, el.entropy(backend.asarray(z)))
    assert np.all(h >= 0) and np.all(h <= math.log(5) + 1e-12)
    assert math.isclose(h[-2], math.log(5), rel_tol=1e-12)  # uniform: the maximum
    assert h[-1] < 1e-40  # one certain class: the minimum
    bits = _np(backend, el.entropy(backend.asarray(z), base=2.0))
    np.testing.assert_allclose(bits, h / math.log(2), rtol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_invariant_to_a_constant_added_to_the_logits(backend, data, loss):
    z, t = data
    fn = getattr(el, loss)
    shifted = backend.asarray(Z + 123.25)
    assert_close(fn(shifted, t, reduction="none"), _np(backend, fn(z, t, reduction="none")),
                 backend, "float64", scale=100)


def test_cross_entropy_gradient_rows_sum_to_zero(backend, data):
    z, t = data
    _, grads = el.value_and_grad(el.cross_entropy, z, t, weight=backend.asarray(W),
                                 label_smoothing=0.1)
    row_sums = np.sum(_np(backend, grads["logits"]), axis=-1)
    np.testing.assert_allclose(row_sums, 0.0, atol=1e-15)


def test_cross_entropy_gradient_is_p_minus_target(backend):
    _, grads = el.value_and_grad(el.cross_entropy, backend.asarray(Z), backend.asarray(Y),
                                 reduction="sum")
    p = np.exp(Z) / np.exp(Z).sum(-1, keepdims=True)
    assert_close(grads["logits"], p - np.eye(5)[Y], backend, "float64")


def test_base_only_rescales(backend, data):
    z, t = data
    nats = _np(backend, el.min_ent(z, t, reduction="none"))
    bits = el.min_ent(z, t, ce_base=2.0, entropy_base=2.0, reduction="none")
    assert_close(bits, nats / math.log(2), backend, "float64")
