"""The explicit-gradient adapter: NumPy, CuPy and array-api-strict (no autograd).

``value_and_grad`` runs the shared forward, then the shared backward with a unit
cotangent. It serves every backend: it is how NumPy and CuPy users train and what the
torch and JAX autograd paths are checked against.
"""

from __future__ import annotations

from typing import Any

from entroloss import _math

from . import kernels_for


def loss(xp: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any,
         scalars: _math.Scalars, *, sample_weight: Any = None, denominator: Any = None) -> Any:
    return _math.forward(xp, spec, logits, target, weight, scalars, kernels_for(xp),
                         sample_weight=sample_weight, denominator=denominator)[0]


def value_and_grad(xp: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any,
                   scalars: _math.Scalars, *, sample_weight: Any = None,
                   denominator: Any = None) -> tuple:
    kernels = kernels_for(xp)
    value, residuals = _math.forward(xp, spec, logits, target, weight, scalars, kernels,
                                     sample_weight=sample_weight, denominator=denominator)
    # d(sum of the output)/d(inputs): a cotangent of ones (a scalar broadcasts for "none")
    cotangent = xp.ones_like(value) if spec.reduction == "none" else 1.0
    grads = _math.backward(xp, spec, residuals, target, weight, scalars, cotangent,
                           logits.dtype, kernels, sample_weight=sample_weight)
    return value, grads.logits, grads.scalars
