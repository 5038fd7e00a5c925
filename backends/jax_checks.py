"""Opt-in data checks for JAX under ``jax.jit``, through ``jax.experimental.checkify``.

Under ``jax.jit`` (and ``grad``, ``vmap``) the loss cannot read its data while tracing, so
the checks that read values (docs/reliability.md) are skipped (``validate="eager"`` is an
error there); an out-of-range class index, a soft-target row that is no distribution, a
negative class weight or a bad array base then gives NaN (docs/backends.md). This module
turns those checks into ``checkify`` checks,
which JAX carries out of the compiled function as an error value::

    import jax, entroloss as el
    from entroloss.backends.jax_checks import checked

    safe = checked(el.cross_entropy, label_smoothing=0.1)   # options are bound here
    err, loss = jax.jit(safe)(logits, labels)
    err.throw()          # raises a ValueError (checkify.JaxRuntimeError) naming the target

To check inside a training step, wrap the step (not only the loss) with ``checkify``::

    from jax.experimental import checkify
    from entroloss.backends.jax_checks import with_checks
    loss = with_checks(el.cross_entropy)
    step = jax.jit(checkify.checkify(jax.value_and_grad(
        lambda params, x, y: loss(model(params, x), y)), errors=checkify.user_checks))
    err, (value, grads) = step(params, x, y)
    err.throw()

The messages are those of the eager checks. The checks cost one pass over the target (and
the class weights); the result is not changed. Static checks (shapes, dtypes, options) run
at trace time as always.
"""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from entroloss._losses import LOSSES
from entroloss._math.target import soft_row_tolerance

__all__ = ["checked", "with_checks", "check_inputs"]

# every public name of a logarithm base
_BASES = tuple(dict.fromkeys(name for definition in LOSSES for name in definition.bases))


def check_inputs(logits: Any, target: Any, /, *, axis: int = -1, weight: Any = None,
                 ignore_index: int | None = None, **options: Any) -> None:
    """Emit ``checkify.check``s for the data rules of the bad-input checks: class indices in
    ``[0, C)`` or ``ignore_index``; soft-target entries non-negative with rows summing to 1;
    class weights non-negative; bases given as arrays finite and > 1.

    Outside any transformation a failing check raises at once; under ``jax.jit`` the
    enclosing function must be functionalised with ``checkify.checkify`` (see
    :func:`checked`)."""
    num_classes = logits.shape[axis]
    if jnp.issubdtype(target.dtype, jnp.integer):
        if target.size:
            outside = (target < 0) | (target >= num_classes)
            if ignore_index is not None:
                outside = outside & (target != ignore_index)
            lowest = jnp.iinfo(target.dtype).min
            bad = jnp.max(jnp.where(outside, target, lowest))
            allowed = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
            checkify.check(~jnp.any(outside),
                           f"target holds class index {{bad}}, outside [0, {num_classes}){allowed}",
                           bad=bad)
    elif target.size:
        checkify.check(jnp.all(target >= 0), "soft target must be non-negative (and not NaN)")
        tolerance = soft_row_tolerance(jnp, target.dtype)  # the eager check's rule
        wide = jnp.float64 if target.dtype == jnp.float64 else jnp.float32
        worst = jnp.max(jnp.abs(jnp.sum(target.astype(wide), axis=axis) - 1))
        checkify.check(worst <= tolerance,
                       f"soft target rows must sum to 1 along axis {axis % logits.ndim} (within "
                       f"{tolerance:.1e}); the worst row is off by {{worst}}", worst=worst)
    if weight is not None:
        checkify.check(jnp.all(weight >= 0), "weight must be non-negative (and not NaN)")
    for name in _BASES:
        value = options.get(name)
        if isinstance(value, jax.Array):
            ok = (value > 1) & jnp.isfinite(value)
            checkify.check(ok, f"{name} must be a finite number > 1, got {{value}}",
                           value=value)


def with_checks(loss_fn: Callable) -> Callable:
    """``loss_fn`` (an entroloss loss) preceded by :func:`check_inputs`; same signature and
    result. Compose it inside a function that ``checkify.checkify`` wraps."""

    @wraps(loss_fn)
    def loss(logits: Any, target: Any, /, **options: Any) -> Any:
        check_inputs(logits, target, **options)
        return loss_fn(logits, target, **options)

    return loss


def checked(loss_fn: Callable, **bound: Any) -> Callable:
    """``loss_fn`` with ``bound`` options, functionalised by ``checkify``: a function
    ``(logits, target, **array_options) -> (error, loss)`` that works under ``jax.jit``
    and ``jax.vmap``. ``error.throw()`` raises ``checkify.JaxRuntimeError`` (a
    ``ValueError``) with the eager check's message if a class index is out of range, a
    soft-target row is negative or does not sum to 1, a class weight is negative, or a
    base given as an array is not a finite number > 1; ``error.get()`` is the
    message or ``None``.

    Options that are not arrays (``reduction``, ``axis``, ``label_smoothing``, ...) must
    be bound here, since a jitted function takes only arrays; arrays (class weights,
    learnt weights and bases) may be bound or passed per call."""
    checked_loss = with_checks(loss_fn)

    @wraps(loss_fn)
    def run(logits: Any, target: Any, /, **options: Any) -> tuple:
        options = {**bound, **options}
        arrays = {k: v for k, v in options.items() if isinstance(v, jax.Array)}
        static = {k: v for k, v in options.items() if k not in arrays}

        def inner(logits, target, arrays):
            return checked_loss(logits, target, **static, **arrays)

        return checkify.checkify(inner, errors=checkify.user_checks)(logits, target, arrays)

    return run
