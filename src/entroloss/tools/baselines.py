"""What ``entroloss bench`` compares with: each framework's native cross entropy and what a
user would write instead of calling entroloss, for every loss of the registry.

A loss's baseline is composed from its registry entry: the main term is the framework's
cross entropy (``F.nll_loss`` of ``log_softmax``; optax under JAX) or, for gamma != 0, log p
gathered at the target; the regularizer is its :class:`~entroloss._losses.Term`'s ``user``
composition (and, for the hand-written NumPy/CuPy baseline, its ``user_gradient``). A term
without them cannot be registered, so no loss falls through to another's baseline.
"""

from __future__ import annotations

import functools
from typing import Any

import entroloss as el

from .._losses import LOSSES, LossDef

__all__ = ["USER_BASELINES", "timed_options", "bound", "torch_user_baseline",
           "jax_native_cross_entropy", "jax_user_baseline", "minimal_cross_entropy",
           "hand_written"]


def timed_options(loss: LossDef) -> dict:
    """The options every timing of ``loss`` passes, ours and the baselines alike: the
    registry's ``example`` weights and own options (MIN-ENT ``entropy_weight``, MIX-ENT
    ``reverse_weight`` and ``eps``, focal ``gamma``); the logarithm bases stay e, as in the
    user's compositions."""
    keep = set(loss.weights) | {o.name for o in loss.options}
    return {k: v for k, v in loss.example.items() if k in keep}


def bound(loss: LossDef, **extra: Any) -> Any:
    """``loss(z, y)`` with its `timed_options` and ``extra``: the public function itself,
    or a ``functools.partial`` of it (no Python frame of the harness's own, as the user's
    call has none)."""
    fn, options = getattr(el, loss.name), {**timed_options(loss), **extra}
    return functools.partial(fn, **options) if options else fn


def _settings(loss: LossDef) -> tuple[float, float, dict]:
    """(gamma, the regularizer's weight, every own option) of a timed call."""
    o = {**loss.defaults(), **timed_options(loss)}
    gamma = o["gamma"] if loss.gamma is None else loss.gamma
    reg = next((s.name for s in loss.parameters if s.slot == "reg_weight"), None)
    return gamma, (0.0 if reg is None else o[reg]), o


def _user_text(loss: LossDef) -> str:
    """The torch composition, as the tables show it; lam, eps and gamma are the values
    `timed_options` gives our call."""
    gamma, _, _ = _settings(loss)
    if loss.regularizer is None and gamma == 0:
        return "F.cross_entropy(z, y)"
    if gamma == 0:
        main = "lp = F.log_softmax(z, -1); F.nll_loss(lp, y)"
    else:
        main = ("lpy = F.log_softmax(z, -1).gather(-1, y[:, None])[:, 0]; "
                f"(-(1 - lpy.exp()) ** {'gamma' if loss.gamma is None else f'{gamma:g}'} "
                "* lpy).mean()")
    if loss.regularizer is None:
        return main
    return f"{main} + lam * ({loss.regularizer.user_text}).mean()"


USER_BASELINES = {loss.name: _user_text(loss) for loss in LOSSES}


def _composition(m: Any, log_softmax: Any, gather: Any, onehot: Any, loss: LossDef,
                 nll: Any = None) -> Any:
    """``f(z, y)``, the user's mean loss in the array module ``m``; ``nll(lp, y)``, the
    library's mean cross entropy from log p (torch's ``nll_loss``), where it has one."""
    gamma, lam, o = _settings(loss)
    term = loss.regularizer

    def f(z: Any, y: Any) -> Any:
        lp = log_softmax(z)
        if gamma == 0 and nll is not None:
            main = nll(lp, y)
        else:
            lpy = gather(lp, y)
            main = (-lpy if gamma == 0 else -(1 - m.exp(lpy)) ** gamma * lpy).mean()
        if term is None:
            return main
        t = onehot(y, z) if term.reads_target else None
        return main + lam * term.user(m, lp, t, o).mean()
    return f


def torch_user_baseline(loss: LossDef) -> Any:
    """``f(z, y)``: the user's torch composition for ``loss`` (`USER_BASELINES`)."""
    import torch
    import torch.nn.functional as F

    gamma, _, _ = _settings(loss)
    if loss.regularizer is None and gamma == 0:
        return F.cross_entropy
    return _composition(torch, lambda z: F.log_softmax(z, -1),
                        lambda lp, y: lp.gather(-1, y[:, None])[:, 0],
                        lambda y, z: F.one_hot(y, z.shape[-1]).to(z.dtype), loss, F.nll_loss)


def jax_native_cross_entropy() -> tuple[str, Any]:
    """(name, ``f(z, y)``): optax's integer-label cross entropy, or the jnp composition
    where optax is not installed."""
    try:
        import optax
    except ImportError:
        return "jnp cross entropy (jit)", jax_user_baseline(LOSSES[0], native=False)

    def native(z: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
    return "optax (jit)", native


def jax_user_baseline(loss: LossDef, native: bool = True) -> Any:
    """``f(z, y)``: the same compositions in jnp (cross entropy: optax's, if ``native``)."""
    import jax
    import jax.numpy as jnp

    gamma, _, _ = _settings(loss)
    if loss.regularizer is None and gamma == 0 and native:
        return jax_native_cross_entropy()[1]
    return _composition(jnp, lambda z: jax.nn.log_softmax(z, -1),
                        lambda lp, y: jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0],
                        lambda y, z: jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype), loss)


def minimal_cross_entropy(xp: Any, z: Any, y: Any) -> tuple:
    """The shortest correct mean cross entropy and its gradient: the NumPy/CuPy baseline."""
    m = xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z - m)
    s = xp.sum(e, axis=-1, keepdims=True)
    log_p_y = xp.take_along_axis(z - m, y[:, None], axis=-1)[:, 0] - xp.log(s[:, 0])
    grad = e / s
    grad[xp.arange(z.shape[0]), y] -= 1.0
    return -xp.mean(log_p_y), grad / z.shape[0]


def hand_written(xp: Any, loss: LossDef, z: Any, y: Any, grad: bool = True) -> Any:
    """A hand-written NumPy/CuPy forward (and, if ``grad``, backward) of ``loss`` with its
    `timed_options`: (mean loss, d loss / d z) or the mean loss alone."""
    gamma, lam, o = _settings(loss)
    term = loss.regularizer
    if term is None and gamma == 0:
        value, g = minimal_cross_entropy(xp, z, y)
        return (value, g) if grad else value
    n, rows = z.shape[0], xp.arange(z.shape[0])
    shifted = z - xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(shifted)
    total = xp.sum(e, axis=-1, keepdims=True)
    lp = shifted - xp.log(total)
    lpy = lp[rows, y]
    py = xp.exp(lpy)
    value = xp.mean(-(1 - py) ** gamma * lpy)
    t = None
    if term is not None:
        if term.reads_target:
            t = xp.zeros_like(z)
            t[rows, y] = 1.0
        reg = term.user(xp, lp, t, o)
        value = value + lam * xp.mean(reg)
    if not grad:
        return value
    p = e / total
    if gamma == 0:
        g = p.copy()
        g[rows, y] -= 1.0
    else:  # d F / d log p_y, then d log p_y / dz = onehot - p
        d = -(1 - py) ** gamma + gamma * (1 - py) ** (gamma - 1) * py * lpy
        g = -p * d[:, None]
        g[rows, y] += d
    if term is not None:
        g += lam * term.user_gradient(xp, lp, p, t, reg, o)
    return value, g / n
