"""Per-token statistics for RL fine-tuning (PPO, GRPO): the log-probability of the target
token, the entropy of the prediction and its log-sum-exp, from logits or from a linear head
(``docs/rl-token-stats.md``).

Nothing here defines math: the log-probability is minus the per-position cross entropy,
the entropy is `entropy` / `linear_entropy`, the log-sum-exp is ``z_y - log p_y``. A
temperature is applied once, to the logits, by scaling what produces them, so that every
statistic is that of ``log_softmax(logits / t)``.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Callable, NamedTuple

from . import _api, _arrays, _linear
from . import _validate as check

__all__ = ["TokenStats", "token_stats", "linear_token_stats"]

# Generated at import from the registry (no def for a type checker to see): found by name.
_cross_entropy: Callable = vars(_api)["cross_entropy"]
_linear_cross_entropy: Callable = vars(_linear)["linear_cross_entropy"]


class TokenStats(NamedTuple):
    """Per-position statistics, each of shape ``target.shape`` (``None`` if not asked for).

    ``logprob``: ``log p_y`` of the target, 0 where the target is ``ignore_index``;
    ``entropy``: the prediction's entropy (nats), at every position;
    ``logsumexp``: ``logsumexp(z)`` of the (capped, then temperature-scaled) logits.
    """

    logprob: Any
    entropy: Any = None
    logsumexp: Any = None


# --- checks, before any work ----------------------------------------------------------------


def _flag(name: str, value: Any) -> bool:
    if value is True or value is False:
        return value
    raise TypeError(f"{name} must be True or False, got {value!r}")


def _namespace(name: str, x: Any) -> Any:
    try:
        return _arrays.namespace(x)
    except TypeError:
        raise TypeError(f"{name} must be an array of a library supporting the array API, got "
                        f"{type(x).__name__}") from None


def _temperature(xp: Any, reference: Any, positions: tuple, temperature: Any,
                 softcap: Any, validate: Any) -> Any:
    """``None``, a Python float > 0, or an array broadcastable to ``positions`` (each entry
    > 0 where the values can be read without a device sync)."""
    if temperature is None:
        return None
    if isinstance(temperature, bool):
        raise TypeError("temperature must be a number > 0 or an array of them, got a bool")
    if isinstance(temperature, numbers.Real):
        t = float(temperature)
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        return t
    temperature = check.same_library(xp, reference, "temperature", temperature)
    if not xp.isdtype(temperature.dtype, "real floating"):
        raise TypeError(f"temperature must have a real floating-point dtype, got "
                        f"{temperature.dtype}")
    shape = tuple(temperature.shape)
    fits = len(shape) <= len(positions) and all(
        # the trailing axes only: positions may have more (leading) axes than temperature
        a in (1, b) for a, b in zip(reversed(shape), reversed(positions), strict=False))
    if not fits:
        raise ValueError(f"temperature must be a number or an array broadcastable to the "
                         f"positions {positions} (one per token, e.g. (batch, 1) per sequence), "
                         f"got shape {shape}")
    if softcap is not None:
        raise ValueError("softcap with a temperature array is not supported (the cap c / t "
                         "would differ per position); pass temperature as a Python number")
    if check.reads_data(check.check_validate(validate), temperature) and \
            not bool(xp.all(temperature > 0)):
        raise ValueError("temperature must be > 0 at every position, got an entry <= 0")
    return temperature


def _class_indices(xp: Any, target: Any, positions: tuple) -> None:
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(f"target must hold class indices (an integer dtype): the statistics "
                        f"are of the target token, got dtype {target.dtype}")
    if tuple(target.shape) != positions:
        raise ValueError(f"target must have shape {positions}, got {tuple(target.shape)}")


def _common(xp: Any, x: Any, target: Any, entropy: Any, entropy_grad: Any, logsumexp: Any,
            softcap: Any, temperature: Any, validate: Any) -> tuple:
    """The checks both forms share; ``x`` is the logits or the hidden states (the
    positions are its leading shape)."""
    want = (_flag("entropy", entropy), _flag("entropy_grad", entropy_grad),
            _flag("logsumexp", logsumexp))
    positions = tuple(x.shape[:-1])
    target = check.same_library(xp, x, "target", target)
    _class_indices(xp, target, positions)
    softcap, _ = check.logit_options(softcap, 0.0)
    return want, positions, target, softcap, _temperature(xp, x, positions, temperature,
                                                         softcap, validate)


# --- helpers ---------------------------------------------------------------------------------


def _stop_gradient(x: Any) -> Any:
    """``x`` cut from the autograd graph, so that a metric keeps no backward buffers."""
    if x is None or isinstance(x, float):
        return x
    which = _arrays.library(x)
    if which == "torch":
        return x.detach()
    if which == "jax":
        return sys.modules["jax"].lax.stop_gradient(x)
    return x  # NumPy, CuPy, array-api-strict: no autograd graph to keep


def _wide(xp: Any, x: Any) -> Any:
    """float16 / bfloat16 in float32: the scaling by ``1 / t`` is a rounding of its own."""
    if x is None or xp.finfo(x.dtype).bits >= 32:
        return x
    return xp.astype(x, xp.float32)


def _per_position(xp: Any, t: Any, positions: tuple, dtype: Any) -> Any:
    return xp.broadcast_to(xp.astype(t, dtype), positions)


def _cap(xp: Any, z: Any, softcap: float | None) -> Any:
    # the losses' own cap (docs/math.md), needed only for the one logit z_y of the lse
    return z if softcap is None else softcap * xp.tanh(z / softcap)


def _stats(xp: Any, dtype: Any, logprob_of, entropy_of, target_logit_of, target: Any,
           ignore_index: int | None, want: tuple) -> TokenStats:
    """Assemble the statistics from the public functions handed in."""
    want_entropy, entropy_grad, want_lse = want
    if want_lse:
        # every position gets a real log p (an ignored one against class 0) so that its lse
        # exists; ignored positions' log p is zeroed afterwards, as the loss does
        ignored = None if ignore_index is None else target == ignore_index
        safe = target if ignored is None else xp.where(ignored, xp.zeros_like(target), target)
        logp = logprob_of(safe, None)
        lse = target_logit_of(safe) - logp
        if ignored is not None:
            logp = xp.where(ignored, xp.zeros_like(logp), logp)
    else:
        logp, lse = logprob_of(target, ignore_index), None
    entropy = entropy_of(entropy_grad) if want_entropy else None
    cast = (lambda v: v if v is None else xp.astype(v, dtype))
    return TokenStats(cast(logp), cast(entropy), cast(lse))


# --- the public functions ---------------------------------------------------------------------


def token_stats(logits: Any, target: Any, /, *, temperature: Any = None, entropy: bool = True,
                entropy_grad: bool = True, logsumexp: bool = False,
                ignore_index: int | None = None, softcap: float | None = None,
                validate: Any = True) -> TokenStats:
    """Per-position log-probability of the target, entropy and log-sum-exp of
    ``softmax(softcap(logits) / temperature)``, the classes on the last axis.

    Args:
      logits: floating array ``(..., C)``.
      target: class indices ``logits.shape[:-1]`` (the sampled tokens).
      temperature: ``None`` (1), a Python number > 0, or an array > 0 broadcastable to
        ``logits.shape[:-1]`` (per token or, shaped ``(batch, 1)``, per sequence); it
        divides the logits once, so every statistic is that of
        ``log_softmax(logits / temperature)``. Differentiable when it is an array.
      entropy: compute the entropy. ``entropy_grad=False`` computes it as a metric only:
        cut from the autograd graph, it keeps no buffers for a backward.
      logsumexp: also return ``logsumexp`` of the scaled logits (``z_y - log p_y``).
      ignore_index: positions whose target is this get ``logprob`` 0 (and no gradient).
      softcap: Gemma 2's cap, applied before the temperature (with a temperature
        array, refused).
      validate: as in `cross_entropy`.

    Returns:
      `TokenStats` ``(logprob, entropy, logsumexp)`` in the logits' library and dtype.

    Example::

      >>> import numpy as np, entroloss as el
      >>> stats = el.token_stats(np.zeros((2, 4)), np.array([0, 3]), temperature=2.0)
      >>> print(stats.logprob.round(4), stats.entropy.round(4))
      [-1.3863 -1.3863] [1.3863 1.3863]
    """
    xp = _namespace("logits", logits)
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the classes, last)")
    want, positions, target, softcap, t = _common(xp, logits, target, entropy, entropy_grad,
                                                  logsumexp, softcap, temperature, validate)
    dtype = logits.dtype

    def scaled(z: Any, t: Any) -> tuple:
        if t is None:
            return z, softcap
        z = _wide(xp, z)
        if isinstance(t, float):
            return z / t, None if softcap is None else softcap / t
        return z / _per_position(xp, t, positions, z.dtype)[..., None], None

    z, cap = scaled(logits, t)

    def logprob_of(y: Any, ignore: int | None) -> Any:
        return -_cross_entropy(z, y, ignore_index=ignore, reduction="none", softcap=cap,
                               validate=validate)

    def entropy_of(grad: bool) -> Any:
        zz, c = (z, cap) if grad else scaled(_stop_gradient(logits), _stop_gradient(t))
        return _api.entropy(zz, softcap=c)

    def target_logit_of(y: Any) -> Any:
        picked = xp.take_along_axis(z, xp.astype(y, xp.int64)[..., None], axis=-1)[..., 0]
        return _cap(xp, picked, cap)

    return _stats(xp, dtype, logprob_of, entropy_of, target_logit_of, target, ignore_index, want)


def linear_token_stats(hidden: Any, classifier: Any, target: Any, /, *, bias: Any = None,
                       temperature: Any = None, entropy: bool = True, entropy_grad: bool = True,
                       logsumexp: bool = False, ignore_index: int | None = None,
                       chunk_size: int | None = None, softcap: float | None = None,
                       validate: Any = True) -> TokenStats:
    """`token_stats` of the logits ``hidden @ classifier.T + bias``, without building them.

    Args:
      hidden: ``(..., H)``; classifier ``(C, H)``; bias ``(C,)`` or None; target class
        indices ``hidden.shape[:-1]``; as in `linear_cross_entropy`.
      temperature: as in `token_stats`. A number ``t`` scales the hidden states and the
        bias by ``1 / t``; an array scales each position's hidden row by its ``1 / t``,
        and a bias then travels as one more column of the classifier against a column of
        ``1 / t`` (a copy of the classifier, ``C x (H + 1)``). float16 / bfloat16 inputs
        are scaled in float32 (and then so are the classifier's and bias's copies).
      entropy, entropy_grad, logsumexp, ignore_index, softcap, validate: as in
        `token_stats`; chunk_size: as in `linear_cross_entropy`.

    The log-probability and the entropy are two calls (`linear_cross_entropy` with
    ``reduction="none"``, `linear_entropy`), so the logits are formed twice in the forward
    (and each call recomputes its chunks in the backward); a fused pass is future work.

    Returns:
      `TokenStats` ``(logprob, entropy, logsumexp)`` of shape ``hidden.shape[:-1]``, in the
      hidden states' library and dtype.
    """
    xp = _namespace("hidden", hidden)
    if hidden.ndim == 0:
        raise ValueError("hidden must have at least 1 dimension (the features, last)")
    head = _linear._head(xp, hidden, classifier, bias)  # the linear losses' own checks
    classifier, bias = head.classifier, head.bias
    want, positions, target, softcap, t = _common(xp, hidden, target, entropy, entropy_grad,
                                                  logsumexp, softcap, temperature, validate)
    dtype = hidden.dtype

    def scaled(h: Any, w: Any, b: Any, t: Any) -> tuple:
        """``(h', W', b', cap')`` with ``h' @ W'.T + b' == (h @ W.T + b) / t``."""
        if t is None:
            return h, w, b, softcap
        h, w, b = _wide(xp, h), _wide(xp, w), _wide(xp, b)
        if isinstance(t, float):
            return h / t, w, None if b is None else b / t, None if softcap is None else softcap / t
        inverse = 1 / _per_position(xp, t, positions, h.dtype)[..., None]
        h = h * inverse
        if b is None:
            return h, w, None, None
        # a per-row scale of the bias is no bias: it rides as a column against 1 / t
        return (xp.concat([h, inverse], axis=-1), xp.concat([w, b[:, None]], axis=-1), None,
                None)

    h, w, b, cap = scaled(hidden, classifier, bias, t)
    common = dict(bias=b, chunk_size=chunk_size, softcap=cap)

    def logprob_of(y: Any, ignore: int | None) -> Any:
        return -_linear_cross_entropy(h, w, y, ignore_index=ignore, reduction="none",
                                      validate=validate, **common)

    def entropy_of(grad: bool) -> Any:
        if grad:
            return _linear.linear_entropy(h, w, **common)
        hh, ww, bb, c = scaled(*(_stop_gradient(v) for v in (hidden, classifier, bias, t)))
        return _linear.linear_entropy(hh, ww, bias=bb, chunk_size=chunk_size, softcap=c)

    def target_logit_of(y: Any) -> Any:
        rows = xp.take(w, xp.reshape(xp.astype(y, xp.int64), (-1,)), axis=0)
        z = xp.sum(xp.reshape(h, (-1, h.shape[-1])) * rows, axis=-1)
        if b is not None:
            z = z + xp.take(b, xp.reshape(xp.astype(y, xp.int64), (-1,)), axis=0)
        return _cap(xp, xp.reshape(z, positions), cap)

    return _stats(xp, dtype, logprob_of, entropy_of, target_logit_of, target, ignore_index, want)
