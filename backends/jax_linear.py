"""JAX: the linear-head losses as a ``jax.custom_vjp``.

The forward rule (run only under differentiation) forms the gradients of the sum while
each chunk of logits is in hand for reductions "mean" and "sum", and the backward rule
scales them by the cotangent; for "none" the backward recomputes each chunk for its
per-row cotangents. Traced (under ``jax.jit``, ``vmap``, ...) the chunks are one
``lax.scan`` body over equal chunks: a Python loop would be unrolled at trace time and XLA
would schedule the unrolled chunks side by side, keeping all their temporaries. Eager, on
concrete arrays, they stay a Python loop (a scan there would be traced and compiled
anew at every call), whose chunks are freed as it goes. The static part of a call (the spec, the weights or bases given as Python
floats) is non-differentiable; ``hidden``, ``classifier``, ``bias`` and weights or bases
given as arrays are differentiated; the target and the class weights are constants.
Ignored rows are computed and masked (the target is not read under tracing).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from entroloss._math import GENERIC, Scalars, compute_dtype, linear


def _scan(x: Any) -> Any:
    """``lax.scan`` for traced inputs, None (the Python loop) for concrete ones."""
    return jax.lax.scan if isinstance(x, jax.core.Tracer) else None


def _merge(floats: Scalars, arrays: Scalars) -> Scalars:
    return Scalars(*(f if a is None else a for f, a in zip(floats, arrays)))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _loss(spec, floats, hidden, classifier, bias, target, weight, arrays):
    head = linear.Head(classifier, bias)
    return linear.forward(jnp, GENERIC, spec, head, hidden, target, weight,
                          _merge(floats, arrays), scan=_scan(hidden))[0]


def _forward(spec, floats, hidden, classifier, bias, target, weight, arrays):
    head, scalars = linear.Head(classifier, bias), _merge(floats, arrays)
    inputs = (hidden, classifier, bias, target, weight, arrays)
    fused = spec.reduction != "none"
    value, denominator, grads = linear.forward(jnp, GENERIC, spec, head, hidden, target, weight,
                                               scalars, with_grads=fused, scan=_scan(hidden))
    return value, (inputs, denominator, grads)


def _backward(spec, floats, residuals, cotangent):
    (hidden, classifier, bias, target, weight, arrays), denominator, grads = residuals
    g = cotangent.astype(compute_dtype(jnp, cotangent.dtype))
    if grads is not None:
        grads = linear.scale(jnp, grads, linear.cotangent_factor(jnp, spec, g, denominator))
    else:
        grads = linear.backward(jnp, GENERIC, spec, linear.Head(classifier, bias), hidden,
                                target, weight, _merge(floats, arrays), g, denominator,
                                scan=_scan(hidden))
    like = lambda d, x: None if x is None else d.astype(x.dtype)
    d_arrays = Scalars(*(like(d, a) for d, a in zip(grads.scalars, arrays)))
    return (like(grads.hidden, hidden), like(grads.classifier, classifier),
            like(grads.bias, bias), None, None, d_arrays)


_loss.defvjp(_forward, _backward)


def loss(call: Any) -> Any:
    floats = Scalars(*(v if isinstance(v, float) else None for v in call.scalars))
    arrays = Scalars(*(None if isinstance(v, float) else v for v in call.scalars))
    return _loss(call.spec, floats, call.hidden, call.head.classifier, call.head.bias,
                 call.target, call.weight, arrays)


def value_and_grad(call: Any) -> tuple:
    from . import explicit_linear

    return explicit_linear.value_and_grad(call, scan=_scan(call.hidden))
