"""Shared by test_fuzz.py and test_extremes.py: the float64 reference's gradient by central
differences, and the loss differentiated every way a backend offers.

Nothing here comes from the package's math: expected values come from ``reference.py``
(plain Python, one position at a time) and expected gradients from central differences of
it, so a wrong forward or a wrong hand-derived backward cannot hide in both.
"""

from __future__ import annotations

import math

import numpy as np

import entroloss as el
import reference
from cases import Case

LOSSES = ("cross_entropy", "min_ent", "mix_ent", "adaptive_ce", "focal")


def reference_loss(kind: str, logits: np.ndarray, target: np.ndarray, options: dict) -> np.ndarray:
    """The reference's loss for public ``options`` (Python floats, NumPy class weights)."""
    return np.asarray(reference.loss(logits, target, **Case(kind, logits, target, options).reference_kwargs()))


def reference_grad(kind: str, logits: np.ndarray, target: np.ndarray, options: dict, *,
                   step: float = 1e-4) -> np.ndarray:
    """d sum(loss) / d logits of the reference, by central differences, in float64.

    Only finite logits are moved. A -inf (masked) logit gets 0 (a masked class has no
    gradient, DESIGN §5); a NaN logit makes its position's gradient NaN.
    """
    z = np.asarray(logits, dtype=np.float64)
    grad = np.zeros_like(z)

    def total(v):
        return float(np.sum(reference_loss(kind, v, target, options)))

    for index in np.ndindex(z.shape):
        if not np.isfinite(z[index]):
            continue
        up, down = z.copy(), z.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (total(up) - total(down)) / (2 * step)
    return grad


def to_numpy(backend, x) -> np.ndarray:
    return backend.to_numpy(x)


def differentiate(backend, fn, logits, target, **options) -> list:
    """``[(path, value, d sum(loss)/d logits)]`` as float64 NumPy arrays, through
    ``el.value_and_grad`` on every backend, plus torch autograd (``backward``) on torch and
    ``jax.grad`` on JAX. The value is that of the plain call ``fn(logits, target, ...)``."""
    value = to_numpy(backend, fn(logits, target, **options))
    explicit_value, grads = el.value_and_grad(fn, logits, target, **options)
    np.testing.assert_array_equal(to_numpy(backend, explicit_value), value)
    assert grads["logits"].dtype == logits.dtype
    out = [("value_and_grad", value, to_numpy(backend, grads["logits"]))]
    if backend.library == "torch":
        z = logits.detach().clone().requires_grad_(True)
        fn(z, target, **options).sum().backward()
        assert z.grad.dtype == logits.dtype
        out.append(("torch.autograd", value, to_numpy(backend, z.grad)))
    elif backend.library == "jax":
        import jax

        g = jax.grad(lambda z: fn(z, target, **options).sum())(logits)
        assert g.dtype == logits.dtype
        out.append(("jax.grad", value, to_numpy(backend, g)))
    return out


def rounded(backend, array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` as the backend holds it in ``dtype``, back in float64 (the reference is
    evaluated on exactly what the backend sees)."""
    return to_numpy(backend, backend.asarray(array, dtype))


def nan_mask_rows(x: np.ndarray) -> np.ndarray:
    return np.isnan(x).any(axis=-1)


def log_classes(num_classes: int) -> float:
    return math.log(num_classes)
