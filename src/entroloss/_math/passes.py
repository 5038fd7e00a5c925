"""The forward and the backward of every loss: reductions and cotangents around
:mod:`.positions` (or :mod:`.chunks`, rows a chunk at a time)."""

from __future__ import annotations

import math
from typing import Any

from . import chunks
from .arrays import device
from .positions import Asked, class_axis_back, gradients, loss_terms
from .primitives import GENERIC, Kernels, in_dtype
from .spec import Gradients, Inputs, Residuals, Scalars, Spec

__all__ = ["forward", "backward"]


def _positions(spec: Spec, shape: tuple) -> int:
    return math.prod(shape) // shape[spec.axis]


def forward(xp: Any, spec: Spec, logits: Any, target: Any, weight: Any, scalars: Scalars,
            kernels: Kernels = GENERIC, *, sample_weight: Any = None,
            denominator: Any = None, log_p: Any = None) -> tuple[Any, Residuals]:
    """The reduced loss, in the logits' dtype, and the residuals for :func:`backward`.

    ``weight`` is the class-weight vector or ``None``; ``sample_weight`` one weight per
    position or ``None``. ``denominator`` (``reduction="mean"`` only; a number > 0 or a
    0-d array, a constant) replaces the mean's counted divisor. Inputs are assumed
    validated. ``kernels`` is the logits' library's table of native primitives;
    ``log_p`` the logits' log p computed natively (:func:`.positions.loss_terms`: no
    residuals for :func:`backward` then, only for a framework's own autograd).
    """
    inputs = Inputs(target, weight, scalars, sample_weight)
    if chunks.applies(spec, _positions(spec, tuple(logits.shape))):
        per = chunks.loss_terms_chunked(xp, kernels, spec, logits, inputs)
    else:
        per = loss_terms(xp, kernels, spec, logits, inputs, log_p)
    if denominator is not None:
        per = per._replace(denominator=denominator)
    size = math.prod(per.loss.shape)
    if spec.reduction == "none":
        value = per.loss
    elif (spec.reduction == "mean" and size > 0 and isinstance(per.denominator, float)
          and per.denominator == float(size)):
        value = xp.mean(per.loss)  # every position counted once: one op for a sum and a divide
    else:
        value = xp.sum(per.loss)
        if spec.reduction == "mean":
            value = safe_divide(xp, value, per.denominator)
    return in_dtype(xp, value, logits.dtype), per.residuals(logits)


def safe_divide(xp: Any, total: Any, denominator: Any) -> Any:
    """0/0 (an empty or all-ignored batch) is NaN on every backend, without a warning."""
    if isinstance(denominator, float):
        return total / denominator if denominator > 0 else total * math.nan
    positive = denominator > 0
    safe = xp.where(positive, denominator, 1.0)
    return xp.where(positive, total / safe, math.nan)


def backward(xp: Any, spec: Spec, residuals: Residuals, target: Any, weight: Any,
             scalars: Scalars, cotangent: Any, logits_dtype: Any, kernels: Kernels = GENERIC, *,
             want_target: bool = False, per_position: bool = False,
             sample_weight: Any = None) -> Gradients:
    """Gradients of ``sum(cotangent * loss)`` for the logits (in ``logits_dtype``), the
    four scalars (in the compute dtype; ``None`` where a scalar is a Python float; per
    position, unreduced, with ``per_position``) and, with ``want_target``, a soft target
    (in the compute dtype)."""
    r = Residuals(*residuals)
    # an array cotangent keeps torch's autograd history (differentiating the backward)
    g = float(cotangent) if isinstance(cotangent, (int, float)) else in_dtype(xp, cotangent, r.main.dtype)
    if r.denominator is not None:
        g = safe_divide(xp, g, r.denominator)
    if isinstance(g, float):  # one array of the positions' shape, not three steps to it
        g_pos = xp.full(r.main.shape, g, dtype=r.main.dtype, device=device(r.main))
    elif spec.reduction == "none":
        g_pos = xp.reshape(g, r.main.shape)
    else:
        g_pos = xp.broadcast_to(g, r.main.shape)
    inputs = Inputs(target, weight, scalars, sample_weight)
    asked = Asked(want_target, per_position)
    if chunks.applies(spec, math.prod(r.main.shape)):
        return chunks.gradients_chunked(xp, kernels, spec, r, inputs, g_pos, logits_dtype, asked)
    dz, d_scalars, d_target = gradients(xp, kernels, spec, r, inputs, g_pos, asked)
    dz = in_dtype(xp, dz, logits_dtype)
    return Gradients(class_axis_back(xp, spec, dz), d_scalars, class_axis_back(xp, spec, d_target))
