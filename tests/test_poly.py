"""PolyLoss (Poly-1, Leng et al. 2022, arXiv 2204.12511): ``poly1 = CE + epsilon (1 - p_y)``
on every backend in float64, its gradients in closed form, optax's
``poly_loss_cross_entropy`` for soft targets, a learnt epsilon, the linear head and the
torch module. (The case grid, the fuzz and the extremes suites run poly1 too: they read the
registry.)"""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
from tests.helpers.assertions import assert_close
from tests.helpers.reliability import differentiate

RNG = np.random.default_rng(2204_12511)
Z = RNG.normal(scale=2.0, size=(6, 5))
Y = np.array([0, 4, 2, -100, 1, 2])
W = RNG.uniform(0.3, 2.0, size=5)


def _closed_form(z, y, epsilon, weight=None):
    """(mean loss, d mean / dz) from ``-w_y log p_y + epsilon w_y (1 - p_y)``, whose gradient
    is ``w_y (1 + epsilon p_y) (p - onehot(y))``; ignored rows (-100) count nothing."""
    lp = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    counted = y != -100
    yy = np.where(counted, y, 0)
    w = (np.ones(z.shape[-1]) if weight is None else weight)[yy] * counted
    lpy = lp[np.arange(len(y)), yy]
    per = w * (-lpy + epsilon * (1 - np.exp(lpy)))
    p = np.exp(lp)
    grad = (w * (1 + epsilon * np.exp(lpy)))[:, None] * (p - np.eye(z.shape[-1])[yy])
    return per.sum() / w.sum(), grad / w.sum()


@pytest.mark.parametrize("epsilon", [1.0, 2.0, -1.0, 0.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weights"])
def test_poly1_is_cross_entropy_plus_epsilon_one_minus_p_y(backend, epsilon, weighted):
    weight = W if weighted else None
    value, grad = _closed_form(Z, Y, epsilon, weight)
    options = {"epsilon": epsilon, "ignore_index": -100}
    if weighted:
        options["weight"] = backend.asarray(weight)
    z, y = backend.asarray(Z), backend.asarray(Y, "int64")
    for path, got, d_logits in differentiate(backend, el.poly1, z, y, **options):
        np.testing.assert_allclose(got, value, rtol=1e-12, err_msg=path)
        np.testing.assert_allclose(d_logits, grad, rtol=1e-12, atol=1e-15, err_msg=path)


def test_poly1_with_soft_targets_is_optaxs_poly_loss(jax_backend):
    optax = pytest.importorskip("optax")
    t = RNG.dirichlet(np.full(5, 0.5), size=6)
    z, target = jax_backend.asarray(Z), jax_backend.asarray(t)
    for epsilon in (2.0, 0.5):
        expected = optax.losses.poly_loss_cross_entropy(z, target, epsilon=epsilon)
        assert_close(el.poly1(z, target, epsilon=epsilon, reduction="none"),
                     np.asarray(expected), jax_backend, "float64")


def test_a_learnt_epsilon_gets_the_mean_of_one_minus_p_y(backend):
    counted = Y != -100
    lp = Z - np.log(np.sum(np.exp(Z), axis=-1, keepdims=True))
    p_y = np.exp(lp[np.arange(6), np.where(counted, Y, 0)])
    expected = np.sum((1 - p_y) * counted) / counted.sum()
    epsilon = backend.asarray(np.array(0.7))
    _, grads = el.value_and_grad(el.poly1, backend.asarray(Z), backend.asarray(Y, "int64"),
                                 epsilon=epsilon, ignore_index=-100)
    np.testing.assert_allclose(backend.to_numpy(grads["epsilon"]), expected, rtol=1e-12)


def test_linear_poly1_is_poly1_of_its_logits():
    h, w = RNG.normal(size=(6, 3)), RNG.normal(size=(5, 3))
    expected = el.poly1(h @ w.T, Y, epsilon=1.5, ignore_index=-100)
    got = el.linear_poly1(h, w, Y, epsilon=1.5, ignore_index=-100, chunk_size=4)
    np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_poly1_module_is_a_drop_in_with_torchs_conventions():
    torch = pytest.importorskip("torch")
    from entroloss.backends.torch import Poly1Loss

    z, y = torch.tensor(Z), torch.tensor(Y)
    expected, _ = _closed_form(Z, Y, 2.0)
    torch.testing.assert_close(Poly1Loss(epsilon=2.0)(z, y), torch.tensor(expected, dtype=z.dtype))


def test_epsilon_below_minus_one_is_refused(backend):
    z, y = backend.asarray(Z), backend.asarray(np.array([0, 1, 2, 3, 4, 0]), "int64")
    with pytest.raises(ValueError, match="epsilon must be >= -1"):
        el.poly1(z, y, epsilon=-1.5)
    with pytest.raises(ValueError, match="epsilon must be >= -1"):  # an array, read eagerly
        el.poly1(z, y, epsilon=backend.asarray(np.array(-2.0)), validate="eager")
