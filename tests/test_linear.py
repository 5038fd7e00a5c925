"""The linear-head losses: ``linear_<loss>(hidden, classifier, target, bias=...)`` equals
the plain loss on ``hidden @ classifier.T + bias`` (its value, and its own gradient
mapped back by the chain rule) on every backend, for every loss x target kind x
reduction of the option grid, chunk size by chunk size; the scalars' gradients against
finite differences; ignored rows; half precision; the bad inputs.
"""

from __future__ import annotations

import doctest
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

import entroloss as el
from entroloss import _linear
from entroloss._math import linear
from entroloss.tools.reference import central_differences
from tests.helpers.assertions import assert_close, tolerance
from tests.helpers.cases import GRID_ARGS, GRID_IDS, draw, scalar_names
from tests.helpers.platforms import backend_dtype_params, backend_params

FEATURES = 4


@dataclass
class LinearCase:
    loss: str
    hidden: np.ndarray  # (..., H)
    classifier: np.ndarray  # (C, H)
    bias: np.ndarray | None
    target: np.ndarray  # indices (...) or probabilities (..., C)
    options: dict  # the loss's keywords; class weight as NumPy; no axis

    @property
    def logits(self) -> np.ndarray:
        z = self.hidden @ self.classifier.T
        return z if self.bias is None else z + self.bias


def linear_case(loss: str, kind: str, reduction: str, salt: str = "linear") -> LinearCase:
    """A grid case (its target and options), with hidden states and a head in place of
    its logits; classes last."""
    case = draw(loss, kind, reduction, salt)
    options = dict(case.options)
    axis = options.pop("axis", -1) % case.logits.ndim
    num_classes = case.logits.shape[axis]
    target = case.target
    if target.dtype.kind == "f" and axis != target.ndim - 1:
        target = np.moveaxis(target, axis, -1)
    positions = case.logits.shape[:axis] + case.logits.shape[axis + 1:]
    rng = np.random.default_rng(zlib.crc32(f"{loss}|{kind}|{reduction}|{salt}|head".encode()))
    hidden = rng.normal(size=positions + (FEATURES,))
    classifier = rng.normal(scale=0.8, size=(num_classes, FEATURES))
    bias = rng.normal(size=num_classes) if rng.random() < 0.7 else None
    return LinearCase(loss, hidden, classifier, bias, target, options)


def array_scalars(lc: LinearCase) -> dict:
    """Every weight and base of the loss as a 0-d float64 array (so that it is learnt)."""
    out = {}
    for name in scalar_names(lc.loss):
        default = 1.7 if name.endswith("base") else 0.6
        out[name] = np.asarray(float(lc.options.get(name, default)))
    return out


def chain_rule(dz: np.ndarray, lc: LinearCase) -> dict:
    """The head's gradients from the plain loss's ``dl/dlogits``."""
    rows = dz.reshape(-1, dz.shape[-1])
    hidden = lc.hidden.reshape(-1, FEATURES)
    grads = {"hidden": dz @ lc.classifier, "classifier": rows.T @ hidden}
    if lc.bias is not None:
        grads["bias"] = rows.sum(axis=0)
    return grads


def expected(lc: LinearCase, scalars: dict) -> tuple:
    """The plain loss (NumPy, float64) on the logits, and its gradients mapped back."""
    value, grads = el.value_and_grad(getattr(el, lc.loss), lc.logits, lc.target,
                                     **{**lc.options, **scalars})
    out = chain_rule(grads.pop("logits"), lc)
    out.update(grads)
    return value, out


def on_backend(lc: LinearCase, backend, dtype: str = "float64", scalars: dict | None = None):
    """(hidden, classifier, target, keywords) as arrays of ``backend``."""
    target = backend.asarray(lc.target, dtype if lc.target.dtype.kind == "f" else "int64")
    options = dict(lc.options)
    if options.get("weight") is not None:
        options["weight"] = backend.asarray(options["weight"], dtype)
    for name, value in (scalars or {}).items():
        options[name] = backend.asarray(value, dtype)
    if lc.bias is not None:
        options["bias"] = backend.asarray(lc.bias, dtype)
    return backend.asarray(lc.hidden, dtype), backend.asarray(lc.classifier, dtype), target, options


def _learnable(options: dict, scalars: dict) -> list:
    return (["bias"] if "bias" in options else []) + list(scalars)


def autograd(backend, fn, hidden, classifier, target, options, learnable) -> tuple:
    """The loss and the gradients of its sum through the framework's own autograd
    (torch, JAX), or ``linear_value_and_grad`` (NumPy, CuPy, array-api-strict)."""
    if backend.library == "torch":
        leaves = {"hidden": hidden, "classifier": classifier,
                  **{n: options[n] for n in learnable}}
        leaves = {n: t.detach().requires_grad_() for n, t in leaves.items()}
        kw = {**options, **{n: leaves[n] for n in learnable}}
        value = fn(leaves["hidden"], leaves["classifier"], target, **kw)
        value.sum().backward()
        return value, {n: t.grad for n, t in leaves.items()}
    if backend.library == "jax":
        import jax

        def total(leaves):
            kw = {**options, **{n: leaves[n] for n in learnable}}
            value = fn(leaves["hidden"], leaves["classifier"], target, **kw)
            return value.sum(), value

        leaves = {"hidden": hidden, "classifier": classifier, **{n: options[n] for n in learnable}}
        (_, value), grads = jax.value_and_grad(total, has_aux=True)(leaves)
        return value, grads
    return el.linear_value_and_grad(fn, hidden, classifier, target, **options)


def check_against_plain(backend, args, chunk_size: int) -> None:
    lc = linear_case(*args)
    scalars = array_scalars(lc)
    value, grads = expected(lc, scalars)
    fn = getattr(el, f"linear_{lc.loss}")
    hidden, classifier, target, options = on_backend(lc, backend, scalars=scalars)
    options["chunk_size"] = chunk_size
    floats = {**options, **{name: float(v) for name, v in scalars.items()}}
    assert_close(fn(hidden, classifier, target, **floats), value, backend, "float64")
    got_value, got = autograd(backend, fn, hidden, classifier, target, options,
                              _learnable(options, scalars))
    assert_close(got_value, value, backend, "float64")
    assert set(got) == set(grads)
    for name in grads:
        assert_close(got[name], grads[name], backend, "float64")
    if backend.library in ("torch", "jax"):  # the explicit path on them too
        got_value, got = el.linear_value_and_grad(fn, hidden, classifier, target, **options)
        assert_close(got_value, value, backend, "float64")
        for name in grads:
            assert_close(got[name], grads[name], backend, "float64")


@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_equals_the_plain_loss_on_the_logits(backend, args):
    """Value and every gradient (hidden, classifier, bias, the weights and bases as 0-d
    arrays), three rows a chunk (chunks that do not divide the rows)."""
    check_against_plain(backend, args, 3)


@pytest.mark.parametrize("chunk_size", [1, 1000])
@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_chunk_size_changes_nothing(args, chunk_size):
    """Every row its own chunk, and one chunk for all (more rows than N), on NumPy."""
    check_against_plain(backend_params(["numpy"])[0].values[0], args, chunk_size)
