"""JAX: the linear-head losses as a ``jax.custom_vjp``.

The forward rule (run only under differentiation) forms the gradients of the loss while
each chunk of logits is in hand for reductions "mean" and "sum", and the backward rule
scales them by the cotangent; for "none" the backward recomputes each chunk for its
per-row cotangents. Traced (under ``jax.jit``, ``vmap``, ...) the chunks are one
``lax.scan`` body over equal chunks: a Python loop would be unrolled at trace time and XLA
would schedule the unrolled chunks side by side, keeping all their temporaries. Eager, on
concrete arrays, they stay a Python loop (a scan there would be traced and compiled
anew at every call), whose chunks are freed as it goes. The static part of a call (the
spec, the weights or bases given as Python floats) is non-differentiable; ``hidden``,
``classifier``, ``bias``, a soft target and weights or bases given as arrays are
differentiated (class indices have no gradient; the class weights, the sample weights and
a denominator are constants: their cotangents are zero). The
rules see which inputs are differentiated (``symbolic_zeros``), so that a soft target's
gradient, of the target's size, is formed only when it is asked for. Ignored rows are
computed and masked (the target is not read under tracing).

With ``class_axis`` (inside ``jax.shard_map``, each device holding a slice of the
classifier's rows: ``backends/jax_sharded.py``) the scan's carry, the gradients of that
slice, is typed as varying over the axis, and the call is staged by ``jax.jit``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from entroloss import _arrays
from entroloss._math import GENERIC, Kernels, Scalars, compute_dtype, linear



def _varying(x: Any) -> frozenset:
    """The mesh axes (inside ``shard_map``) along which ``x`` may differ between devices."""
    aval = jax.typeof(x)
    vma = getattr(aval, "vma", None)  # (the JAX versions before manual_axis_type)
    if vma is None:
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    return frozenset(vma or ())


def _as_varying(x: Any, like: Any) -> Any:
    """``x`` typed as varying along every mesh axis that ``like`` varies along."""
    more = tuple(sorted(_varying(like) - _varying(x), key=str))
    if not more:
        return x
    cast = getattr(jax.lax, "pcast", None)
    if cast is None:  # (the JAX versions before pcast)
        return jax.lax.pvary(x, more)  # type: ignore[attr-defined]
    return cast(x, more, to="varying")


def _scan(body: Any, carry: Any, chunks: Any) -> tuple:
    """``jax.lax.scan``, its initial carry typed as the body makes it: inside
    ``shard_map`` with the classes sharded (``class_axis``), the gradients of the
    classifier's slice vary between devices while their zeros do not, and a scan's carry
    must keep its type."""
    first = jax.tree.map(lambda x: x[0], chunks)
    for _ in range(3):  # a carry made varying may make another one varying
        after, _ = jax.eval_shape(body, carry, first)
        if all(_varying(a) <= _varying(c) for a, c in zip(jax.tree.leaves(after),
                                                         jax.tree.leaves(carry), strict=True)):
            break
        carry = jax.tree.map(_as_varying, carry, after)
    return jax.lax.scan(body, carry, chunks)


_TRACED = replace(GENERIC, scan=_scan)


def _kernels(x: Any) -> Kernels:
    """The definitions, the chunks through ``lax.scan`` for traced inputs and a Python
    loop for concrete ones."""
    return GENERIC if _arrays.is_concrete(x) else _TRACED


def _merge(floats: Scalars, arrays: Scalars) -> Scalars:
    return Scalars(*(f if a is None else a for f, a in zip(floats, arrays, strict=True)))


def _batch(floats: Scalars, hidden, classifier, bias, target, weight, arrays,
           constants) -> linear.Batch:
    return linear.batch(hidden, classifier, bias, target, weight, _merge(floats, arrays),
                        sample_weight=constants[0])


def _denominator(fixed: Any, constants: tuple) -> Any:
    """The call's denominator: ``fixed`` where it was a Python number, else the array in
    ``constants`` (or None)."""
    return fixed if constants[1] is None else constants[1]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _loss(spec, floats, fixed, hidden, *rest):
    return linear.forward(jnp, _kernels(hidden), spec, _batch(floats, hidden, *rest),
                          denominator=_denominator(fixed, rest[-1]))[0]


@jax.tree_util.register_static
@dataclass(frozen=True)
class _Static:
    """What the forward rule tells the backward rule without an array (no leaves)."""

    wants: linear.Wants


def _forward(spec, floats, fixed, *primals):
    unwrap = lambda attribute: jax.tree.map(lambda p: getattr(p, attribute), primals)
    inputs = hidden, *_ = unwrap("value")
    wants = linear.Wants(target=spec.soft and unwrap("perturbed")[3])
    fused = spec.reduction != "none"
    value, denominator, grads = linear.forward(jnp, _kernels(hidden), spec,
                                               _batch(floats, *inputs), with_grads=fused,
                                               wants=wants,
                                               denominator=_denominator(fixed, inputs[-1]))
    return value, (inputs, denominator, grads, _Static(wants))


def _backward(spec, floats, fixed, residuals, cotangent):
    inputs, denominator, grads, static = residuals
    hidden, classifier, bias, target, weight, arrays, constants = inputs
    if isinstance(cotangent, SymbolicZero):
        cotangent = jnp.zeros(cotangent.shape, cotangent.dtype)
    g = cotangent.astype(compute_dtype(jnp, cotangent.dtype))
    if grads is not None:
        grads = linear.scale(jnp, grads, g)  # the forward's are the reduced loss's
    else:
        grads = linear.backward(jnp, _kernels(hidden), spec, _batch(floats, *inputs), g,
                                denominator, wants=static.wants)
    like = lambda d, x: None if x is None else d.astype(x.dtype)
    d_arrays = Scalars(*(like(d, a) for d, a in zip(grads.scalars, arrays, strict=True)))
    # None is a zero cotangent: right for class indices (no gradient) and for a soft
    # target that is not differentiated (its gradient was not formed)
    d_target = None if grads.target is None else grads.target.astype(target.dtype)
    return (like(grads.hidden, hidden), like(grads.classifier, classifier),
            like(grads.bias, bias), d_target, None, d_arrays, None)


_loss.defvjp(_forward, _backward, symbolic_zeros=True)
# inside shard_map (class_axis) called without jax.jit, JAX cannot run a custom_vjp with
# symbolic zeros op by op; staged by jit, it can (and jit inside jit is inlined)
_staged = jax.jit(_loss, static_argnums=(0, 1, 2))


def loss(call: Any) -> Any:
    floats = Scalars(*(v if isinstance(v, float) else None for v in call.scalars))
    arrays = Scalars(*(None if isinstance(v, float) else v for v in call.scalars))
    denominator = call.denominator
    fixed = denominator if isinstance(denominator, float) else None
    constants = (call.sample_weight, None if fixed is not None else denominator)
    run = _loss if call.spec.classes is None else _staged
    return run(call.spec, floats, fixed, call.hidden, call.head.classifier, call.head.bias,
               call.target, call.weight, arrays, constants)


def value_and_grad(call: Any) -> tuple:
    from . import explicit_linear

    return explicit_linear.value_and_grad(call, _kernels(call.hidden))
