"""The linear-head losses without autograd: NumPy, CuPy, array-api-strict.

``value_and_grad`` forms the gradients of the reduced loss in the one pass over the
chunks; it is also torch's explicit path (under ``no_grad``).
"""

from __future__ import annotations

from typing import Any

from entroloss._math import linear

from . import kernels_for


def _batch(call: Any) -> linear.Batch:
    return linear.batch(call.hidden, call.head.classifier, call.head.bias, call.target,
                        call.weight, call.scalars, call.sample_weight)


def loss(call: Any) -> Any:
    xp = call.xp
    return linear.forward(xp, kernels_for(xp), call.spec, _batch(call), keep=call.keep,
                          denominator=call.denominator)[0]


def value_and_grad(call: Any, kernels: Any = None) -> tuple:
    """``kernels``: the namespace's table where None (JAX passes its table of the call)."""
    xp = call.xp
    kernels = kernels_for(xp) if kernels is None else kernels
    value, _, grads = linear.forward(xp, kernels, call.spec, _batch(call),
                                               with_grads=True, keep=call.keep,
                                               denominator=call.denominator)
    return value, grads
