"""JAX: the shared forward/backward as a ``jax.custom_vjp``.

Works under ``jax.jit``, ``jax.grad``, ``jax.value_and_grad`` and ``jax.vmap``. The static
part of a call (the spec and the weights or bases given as Python floats) is a
non-differentiable argument; weights and bases given as arrays receive gradients. No
gradient flows to the target or the class weights. XLA fuses the generic definitions
itself, so JAX has no kernel table.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from entroloss import _math


def _merge(floats: _math.Scalars, arrays: _math.Scalars) -> _math.Scalars:
    return _math.Scalars(*(f if a is None else a for f, a in zip(floats, arrays)))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _loss(spec, floats, logits, target, weight, arrays):
    return _math.forward(jnp, spec, logits, target, weight, _merge(floats, arrays))[0]


def _loss_fwd(spec, floats, logits, target, weight, arrays):
    value, residuals = _math.forward(jnp, spec, logits, target, weight, _merge(floats, arrays))
    return value, (residuals, target, weight, arrays)


def _loss_bwd(spec, floats, saved, grad):
    residuals, target, weight, arrays = saved
    d_logits, d_scalars = _math.backward(jnp, spec, residuals, target, weight,
                                         _merge(floats, arrays), grad, grad.dtype)
    d_arrays = _math.Scalars(*(None if a is None else d.astype(a.dtype)
                               for a, d in zip(arrays, d_scalars)))
    return d_logits, None, None, d_arrays


_loss.defvjp(_loss_fwd, _loss_bwd)


def loss(xp: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any,
         scalars: _math.Scalars) -> Any:
    floats = _math.Scalars(*(v if isinstance(v, float) else None for v in scalars))
    arrays = _math.Scalars(*(None if isinstance(v, float) else v for v in scalars))
    return _loss(spec, floats, logits, target, weight, arrays)
