"""The two ways a torch call is differentiated (``backends/torch.py``): torch's autograd
through ``_math.forward`` (small logits) and the ``autograd.Function`` around the shared
backward (large logits, ``chunk_size``). The choice depends on the logits' size and the
options alone, and both give the same values and gradients, for every loss of the
registry and every option that changes the math."""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses, _prepare
from entroloss._math import terms
from tests.helpers.torch_paths import force_path

torch = pytest.importorskip("torch")
from entroloss.backends import torch as adapter  # noqa: E402

# (options, soft target) per variant; every loss runs each with its registry example
VARIANTS = {
    "defaults": ({}, False),
    "weights-ignore-smoothing": ({"weight": "w", "ignore_index": 1, "label_smoothing": 0.1}, False),
    "sum-softcap-zloss": ({"reduction": "sum", "softcap": 3.0, "z_loss": 1e-3}, False),
    "none-unchecked": ({"reduction": "none", "validate": False}, False),
    "soft-target": ({"label_smoothing": 0.05}, True),
    "learnt-scalars": ({"learnt": True}, False),
}


def _call(definition, options, soft, *, autograd, monkeypatch):
    """(value, d logits, d target or None, {scalar: d scalar}) on one path, float64."""
    force_path(monkeypatch, autograd)
    _prepare.BOUND_CALLS.clear()  # a call bound on the other path would keep it
    rng = np.random.default_rng(5)
    z = torch.tensor(rng.normal(scale=2.0, size=(6, 5)), requires_grad=True)
    if not soft and "label_smoothing" not in options:
        # a masked class off the target (smoothing puts mass on it: the loss is +inf)
        z.data[2, 3] = -math.inf
    y = torch.tensor([0, 1, 2, 4, 1, 0])
    target = y
    if soft:
        t = rng.gamma(0.7, size=(6, 5)) + 1e-3
        target = torch.tensor(t / t.sum(-1, keepdims=True), requires_grad=True)
    options = {**{k: v for k, v in definition.example.items()}, **options}
    learnt = {}
    if options.pop("learnt", False):
        for s in definition.parameters:
            learnt[s.name] = torch.tensor(options.get(s.name, s.default) if not s.is_base
                                          else 2.5, dtype=torch.float64, requires_grad=True)
        options.update(learnt)
    if options.get("weight") == "w":
        options["weight"] = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.5], dtype=torch.float64)
    value = getattr(el, definition.name)(z, target, **options)
    inputs = [z] + ([target] if soft else []) + list(learnt.values())
    grads = torch.autograd.grad(value.sum(), inputs, allow_unused=True)
    d_target = grads[1] if soft else None
    return value, grads[0], d_target, dict(zip(learnt, grads[1 + soft:], strict=True))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_both_paths_give_the_same_values_and_gradients(definition, variant, monkeypatch):
    options, soft = VARIANTS[variant]
    a = _call(definition, dict(options), soft, autograd=True, monkeypatch=monkeypatch)
    f = _call(definition, dict(options), soft, autograd=False, monkeypatch=monkeypatch)
    for name, x, y in (("value", a[0], f[0]), ("logits", a[1], f[1]), ("target", a[2], f[2])):
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        np.testing.assert_allclose(x.detach().numpy(), y.detach().numpy(), rtol=1e-12,
                                   atol=1e-12, err_msg=name)
    assert a[3].keys() == f[3].keys()
    for name in a[3]:
        np.testing.assert_allclose(float(a[3][name]), float(f[3][name]), rtol=1e-12,
                                   atol=1e-12, err_msg=name)


def test_the_path_is_chosen_by_size_and_options_only(monkeypatch):
    import dataclasses

    from entroloss.backends import torch_native

    monkeypatch.setattr(torch_native, "NATIVE", False)  # (tests/test_torch_native.py)
    small = torch.zeros(4, 3)
    large = torch.zeros(adapter.AUTOGRAD_MAX_ELEMENTS + 1)[None]
    spec = el._math.Spec(axis=1, soft=False)
    assert adapter.uses_autograd(spec, small)
    assert not adapter.uses_autograd(spec, large)
    assert not adapter.uses_autograd(dataclasses.replace(spec, chunk_size=2), small)
    # the focal family's plain derivative is NaN where its hand-derived one is finite
    assert not adapter.uses_autograd(dataclasses.replace(spec, gamma=1.0), small)
    # a regularizer moves the threshold down (measured), never up; the entropy's and the
    # reverse term's graphs are slower than the Function at every size measured
    assert set(adapter.AUTOGRAD_MAX_ELEMENTS_REGULARIZED) == set(terms.REGULARIZERS)
    for name, most in adapter.AUTOGRAD_MAX_ELEMENTS_REGULARIZED.items():
        assert most <= adapter.AUTOGRAD_MAX_ELEMENTS
        regularized = dataclasses.replace(spec, regularizer=name)
        if most:
            assert adapter.uses_autograd(regularized, torch.zeros(1, most))
        assert not adapter.uses_autograd(regularized, torch.zeros(1, most + 1))
    assert not adapter.uses_autograd(dataclasses.replace(spec, regularizer="entropy"), small)


def test_small_logits_are_differentiated_by_torchs_autograd(monkeypatch):
    """No Python backward below the threshold: the graph holds torch's own nodes."""
    from entroloss.backends import torch_native

    z = torch.randn(8, 5, requires_grad=True)
    for loss in (el.cross_entropy, el.poly1):
        for _ in range(2):  # unbound, bound
            node = type(loss(z, torch.randint(0, 5, (8,))).grad_fn).__name__
            assert node not in ("_LossBackward", "_ReplayedBackward")
    monkeypatch.setattr(torch_native, "NATIVE", False)  # else plain CE is torch's nll_loss
    big = torch.randn(2, adapter.AUTOGRAD_MAX_ELEMENTS, requires_grad=True)
    value = el.cross_entropy(big, torch.tensor([0, 1]))
    # (the Function of a call with its options' arrays, or of a bound call)
    assert type(value.grad_fn).__name__ in ("_LossBackward", "_ReplayedBackward")
