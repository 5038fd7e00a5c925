"""The linear-head losses without autograd: NumPy, CuPy, array-api-strict.

``value_and_grad`` forms the gradients of the sum in the one pass over the chunks and
scales them by the mean's divisor; it is also torch's explicit path (under ``no_grad``).
"""

from __future__ import annotations

from typing import Any

from entroloss._math import linear

from . import kernels_for


def loss(call: Any) -> Any:
    xp = call.xp
    return linear.forward(xp, kernels_for(xp), call.spec, call.head, call.hidden, call.target,
                          call.weight, call.scalars, keep=call.keep)[0]


def value_and_grad(call: Any, add: Any = linear.add_product, scan: Any = None) -> tuple:
    xp = call.xp
    value, denominator, grads = linear.forward(
        xp, kernels_for(xp), call.spec, call.head, call.hidden, call.target, call.weight,
        call.scalars, with_grads=True, keep=call.keep, add=add, scan=scan)
    if call.spec.reduction == "mean":
        grads = linear.scale(xp, grads, linear.cotangent_factor(xp, call.spec, 1.0, denominator))
    return value, grads
