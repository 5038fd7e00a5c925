"""JAX: the shared forward/backward as a ``jax.custom_jvp``.

The tangent of the loss is the hand-derived gradient (``entroloss._math.backward``)
applied to the tangents of its inputs. JAX transposes that linear map for reverse mode
(``jax.grad``, ``jax.value_and_grad``), uses it as is for forward mode (``jax.jvp``,
``jax.jacfwd``), and differentiates the backward's own ``jnp`` operations for second
order (``jax.hessian``). Works under ``jax.jit`` and ``jax.vmap``. The static part of a
call (the spec and the weights or bases given as Python floats) is a non-differentiable
argument; the logits, a soft target, and weights and bases given as arrays are
differentiated. The class weights, the sample weights and a denominator are constants
(their tangents are ignored: ``jax.grad`` gives them 0); a denominator given as a Python
number is static, like the scalars given as floats. XLA fuses the generic
definitions itself, so JAX has no kernel table. With ``class_axis`` (inside
``jax.shard_map``: ``backends/jax_sharded.py``) the tangent of the logits' slice is
summed over the devices, as every sum over the classes is.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from entroloss import _math


def _merge(floats: _math.Scalars, arrays: _math.Scalars) -> _math.Scalars:
    return _math.Scalars(*(f if a is None else a for f, a in zip(floats, arrays, strict=True)))


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _loss(spec, floats, fixed, logits, target, weight, arrays, constants):
    sample_weight, denominator = _constants(fixed, constants)
    return _math.forward(jnp, spec, logits, target, weight, _merge(floats, arrays),
                         sample_weight=sample_weight, denominator=denominator)[0]


def _constants(fixed: Any, constants: tuple) -> tuple:
    """``(sample_weight, denominator)``: the denominator is ``fixed`` where it was a Python
    number, else the array in ``constants``."""
    sample_weight, denominator = constants
    return sample_weight, fixed if denominator is None else denominator


def _is_zero(tangent: Any) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


@partial(_loss.defjvp, symbolic_zeros=True)
def _loss_jvp(spec, floats, fixed, primals, tangents):
    logits, target, weight, arrays, constants = primals
    d_logits, d_target, _, d_arrays, _ = tangents
    scalars = _merge(floats, arrays)
    sample_weight, denominator = _constants(fixed, constants)
    value, residuals = _math.forward(jnp, spec, logits, target, weight, scalars,
                                     sample_weight=sample_weight, denominator=denominator)
    per_position = spec.reduction == "none"
    cotangent = jnp.ones_like(value) if per_position else 1.0
    want_target = spec.soft and not _is_zero(d_target)
    grads = _math.backward(jnp, spec, residuals, target, weight, scalars, cotangent,
                           value.dtype, want_target=want_target, per_position=per_position,
                           sample_weight=sample_weight)
    dtype = _math.compute_dtype(jnp, value.dtype)

    def pair(gradient, tangent):  # <gradient, tangent> per position (or in all)
        product = gradient.astype(dtype) * tangent.astype(dtype)
        return jnp.sum(product, axis=spec.axis) if per_position else jnp.sum(product)

    out = jnp.zeros(value.shape, dtype)
    if not _is_zero(d_logits):
        out = out + pair(grads.logits, d_logits)
    if want_target:
        out = out + pair(grads.target, d_target)
    if spec.classes is not None:  # each device's pairs are over its slice of the classes
        out = spec.classes.group.sum(out)
    for gradient, tangent in zip(grads.scalars, d_arrays, strict=True):
        if gradient is not None and not _is_zero(tangent):
            out = out + gradient * tangent.astype(dtype)
    return value, out.astype(value.dtype)


def loss(xp: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any,
         scalars: _math.Scalars, *, sample_weight: Any = None, denominator: Any = None) -> Any:
    floats = _math.Scalars(*(v if isinstance(v, float) else None for v in scalars))
    arrays = _math.Scalars(*(None if isinstance(v, float) else v for v in scalars))
    fixed = denominator if isinstance(denominator, float) else None
    constants = (sample_weight, None if fixed is not None else denominator)
    return _loss(spec, floats, fixed, logits, target, weight, arrays, constants)
