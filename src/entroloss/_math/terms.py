"""Each term of the losses, its value and its gradient side by side (``docs/math.md``
derives them).

Per position, natural log, with ``p = softmax(z)`` and the target's ``w * q``:

- main term ``F = -sum_c w_c q_c (1 - p_c)^gamma log p_c`` (cross entropy at gamma = 0,
  the linearly adaptive loss at gamma = 1): ``dF/dz = v - p sum_c v_c`` with
  ``v_c = w_c q_c p_c f'(p_c)``, ``f(p) = -(1 - p)^gamma log p``;
- entropy ``H = -sum_c p_c log p_c`` (MIN-ENT): ``dH/dz = -p (log p + H)``;
- reverse cross entropy ``R = sum_c p_c a_c``, ``a_c = -log(q_c + eps)`` (MIX-ENT):
  ``dR/dz = p (a - R)``;
- the polynomial term ``P = 1 - sum_c q_c p_c`` (Poly-1): ``dP/dz = p (1 - P - q)``;
- the z-loss ``Z = s * z_loss * lse^2``, ``lse = logsumexp(z)`` (PaLM), added to any loss
  with ``z_loss > 0``: ``dZ/dz = 2 s z_loss lse p``.

Soft targets also get gradients with respect to ``q`` (``*_gradient_q``):
``dF/dq_c = w_c f(p_c)``, ``dR/dq_c = -p_c / (q_c + eps)``, ``dP/dq_c = -p_c``; H does
not read q.

For a class-index target without smoothing (``Target.sparse``) every one of these
gradients is ``p * (p_coef + log_p_coef * log p) + onehot(y) * onehot_coef`` with one
number per position for each coefficient (:class:`OneHotGradient`); a kernel then writes
the whole gradient in one pass (``primitives.softmax_affine``). Dense targets get the
gradients as arrays of the logits' shape.

A gradient function takes ``coef``, the per-position factor the term enters the loss
with (cotangent x weight / ln base), and returns that term's share of ``dl/dz``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .primitives import Kernels
from .spec import Spec
from .target import Target

__all__ = ["OneHotGradient", "main_value", "main_gradient_onehot", "main_gradient_dense",
           "REGULARIZERS", "reads_log_p_y"]


class OneHotGradient(NamedTuple):
    """``p * (p_coef + log_p_coef * log p) + onehot(y) * onehot_coef``; None is 0."""

    p_coef: Any
    onehot_coef: Any = None
    log_p_coef: Any = None


def combine(a: OneHotGradient, b: OneHotGradient) -> OneHotGradient:
    """The sum of two gradients of that form (at most one of them reads log p)."""
    onehot = a.onehot_coef if b.onehot_coef is None else (
        b.onehot_coef if a.onehot_coef is None else a.onehot_coef + b.onehot_coef)
    return OneHotGradient(a.p_coef + b.p_coef, onehot,
                          a.log_p_coef if b.log_p_coef is None else b.log_p_coef)


# --- the main term F_gamma ------------------------------------------------------------------


def focal_factor(xp: Any, lp: Any, gamma: float) -> Any:
    """``(1 - p)^gamma`` from log p, so that ``1 - p`` keeps its precision near p = 1;
    None for gamma = 0.

    For gamma < 1 the power's slope is infinite at ``1 - p = 0``, which a saturated
    prediction reaches in floating point: there the factor is 0 through a ``where`` whose
    other branch never sees 0, so that a framework differentiating this (second order)
    gets 0, not ``inf * 0``. NaN stays NaN.
    """
    if gamma == 0:
        return None
    one_minus_p = -xp.expm1(lp)
    if gamma == 1:
        return one_minus_p
    if gamma > 1:
        return one_minus_p**gamma
    zero = one_minus_p == 0
    return xp.where(zero, 0.0, xp.where(zero, 1.0, one_minus_p) ** gamma)


def focal_values(xp: Any, lp: Any, gamma: float) -> Any:
    """``f(p) = -(1 - p)^gamma log p`` elementwise."""
    factor = focal_factor(xp, lp, gamma)
    return -lp if factor is None else -factor * lp


def focal_slopes(xp: Any, finite_lp: Any, gamma: float) -> Any:
    """``p f'(p) = gamma p (1-p)^(gamma-1) log p - (1-p)^gamma`` elementwise.

    Written as ``gamma (p log p) (1-p)^(gamma-1)`` so that it stays finite for gamma < 1
    as p -> 1 (its limit there is 0) and at masked classes (p = 0).
    """
    if gamma == 0:
        return -xp.ones_like(finite_lp)
    one_minus_p = -xp.expm1(finite_lp)
    p_log_p = xp.exp(finite_lp) * finite_lp
    if gamma == 1:
        return p_log_p - one_minus_p
    if gamma >= 2:  # (1-p)^(gamma-1) and its slope are finite: no guards needed
        return (gamma * p_log_p - one_minus_p) * one_minus_p ** (gamma - 1)
    positive = one_minus_p > 0
    safe = xp.where(positive, one_minus_p, 1.0)
    tail = xp.where(positive, p_log_p * safe ** (gamma - 1), 0.0)
    return gamma * tail - focal_factor(xp, finite_lp, gamma)


def main_value(xp: Any, spec: Spec, target: Target, lp: Any) -> Any:
    """F per position; ``lp`` is log p in full (dense targets) or at the target (sparse).
    +inf where the target has mass on a masked class."""
    return target.weighted_sum(focal_values(xp, lp, spec.gamma))


def main_gradient_onehot(xp: Any, spec: Spec, target: Target, log_p_y: Any,
                         coef: Any) -> OneHotGradient:
    """A one-hot q puts ``v`` on the target alone, ``v_y = s p_y f'(p_y)``, so that
    ``dF/dz = -v_y p + v_y onehot``. For cross entropy ``p_y f'(p_y) = -1`` whatever p_y
    (``log_p_y`` may then be None)."""
    if spec.gamma == 0:  # v_y = -s coef: one negation instead of two
        p_coef = coef if target.scale is None else coef * target.scale
        return OneHotGradient(p_coef=p_coef, onehot_coef=-p_coef)
    k = coef * focal_slopes(xp, log_p_y, spec.gamma)
    if target.scale is not None:
        k = k * target.scale
    return OneHotGradient(p_coef=-k, onehot_coef=k)


def main_gradient_dense(xp: Any, spec: Spec, target: Target, finite_lp: Any, p: Any) -> Any:
    """``dF/dz = v - p sum_c v_c`` (per unit coefficient)."""
    v = target.wq * focal_slopes(xp, finite_lp, spec.gamma)
    return v - p * target.classes_sum(xp.sum(v, axis=-1, keepdims=True))


def main_gradient_q(xp: Any, spec: Spec, target: Target, lp: Any) -> Any:
    """``dF/dq_c = w_c f(p_c)`` (soft targets): +inf at a masked class, as the loss is
    +inf once the target puts mass there; 0 where the class weight is 0."""
    values = focal_values(xp, lp, spec.gamma)
    if target.weight is None:
        return values
    return xp.where(target.weight == 0, 0.0, target.weight * values)


# --- the entropy H (MIN-ENT) ----------------------------------------------------------------


def entropy_value(xp: Any, kernels: Kernels, spec: Spec, target: Target, finite_lp: Any,
                  log_p_y: Any) -> Any:
    # (-0 where p is one-hot: a loss term, summed; a negation is one op where 0.0 - x,
    # a Python number, costs torch a conversion of it too)
    return -target.classes_sum(kernels.sum_p_log_p(xp, finite_lp))


def entropy_gradient_onehot(xp: Any, spec: Spec, reg: Any, log_p_y: Any,
                            coef: Any) -> OneHotGradient:
    """``c dH/dz = p (-c H) + p log p (-c)``: no one-hot part."""
    return OneHotGradient(p_coef=-(coef * reg), log_p_coef=-coef)


def entropy_gradient_dense(xp: Any, spec: Spec, target: Target, finite_lp: Any, p: Any,
                           reg: Any) -> Any:
    return -(p * (finite_lp + reg[..., None]))


def entropy_gradient_q(xp: Any, spec: Spec, target: Target, p: Any) -> Any:
    return None  # H does not read the target


# --- the reverse cross entropy R (MIX-ENT) ---------------------------------------------------


def reverse_levels(spec: Spec) -> tuple[float, float]:
    """``a = -log(q + eps)`` off and on the target class, for a one-hot target."""
    return -math.log(spec.eps), -math.log(1.0 + spec.eps)


def reverse_value(xp: Any, kernels: Kernels, spec: Spec, target: Target, finite_lp: Any,
                  log_p_y: Any) -> Any:
    if target.sparse:  # R = a_on p_y + a_off sum_{c != y} p_c, from its terms
        a_off, a_on = reverse_levels(spec)
        return target.sum_p_by_level(kernels, finite_lp, a_off, a_on)
    return target.classes_sum(xp.sum(xp.exp(finite_lp) * target.reverse_log(), axis=-1))


def reverse_gradient_onehot(xp: Any, spec: Spec, reg: Any, log_p_y: Any,
                            coef: Any) -> OneHotGradient:
    """``a`` is ``a_off`` everywhere but ``a_on`` at the target, so that
    ``p (a - R) = p (a_off - R) + onehot p_y (a_on - a_off)``."""
    a_off, a_on = reverse_levels(spec)
    return OneHotGradient(p_coef=coef * (a_off - reg),
                          onehot_coef=coef * (a_on - a_off) * xp.exp(log_p_y))


def reverse_gradient_dense(xp: Any, spec: Spec, target: Target, finite_lp: Any, p: Any,
                           reg: Any) -> Any:
    return p * (target.reverse_log() - reg[..., None])


def reverse_gradient_q(xp: Any, spec: Spec, target: Target, p: Any) -> Any:
    """``dR/dq_c = -p_c / (q_c + eps)``; 0 where p_c = 0."""
    inside = xp.where(target.q == 0, spec.eps, target.q + spec.eps)  # eps kept in Python
    return xp.where(p == 0, 0.0, -(p / inside))


# --- the polynomial term P (Poly-1) -----------------------------------------------------------


def poly_value(xp: Any, kernels: Kernels, spec: Spec, target: Target, finite_lp: Any,
               log_p_y: Any) -> Any:
    """``P = 1 - sum_c q_c p_c``; ``1 - p_y`` as ``-expm1(log p_y)`` for a class index, so
    that it keeps its precision as p_y -> 1."""
    if target.sparse:
        return -xp.expm1(log_p_y)
    return 1.0 - target.classes_sum(xp.sum(target.q * xp.exp(finite_lp), axis=-1))


def poly_gradient_onehot(xp: Any, spec: Spec, reg: Any, log_p_y: Any,
                         coef: Any) -> OneHotGradient:
    """``dP/dz = -p_y (onehot - p) = p p_y - onehot p_y``."""
    k = coef * xp.exp(log_p_y)
    return OneHotGradient(p_coef=k, onehot_coef=-k)


def poly_gradient_dense(xp: Any, spec: Spec, target: Target, finite_lp: Any, p: Any,
                        reg: Any) -> Any:
    """``dP/dz = p (sum_c q_c p_c - q)``, with ``sum_c q_c p_c = 1 - P``."""
    return p * ((1.0 - reg)[..., None] - target.q)


def poly_gradient_q(xp: Any, spec: Spec, target: Target, p: Any) -> Any:
    return -p  # dP/dq_c = -p_c


# --- the z-loss (PaLM) ------------------------------------------------------------------------


def z_loss_value(xp: Any, spec: Spec, target: Target, top: Any, norm: Any) -> Any:
    """``s * z_loss * lse^2`` per position, ``lse = row_max + log_norm`` (the row statistics
    the loss has anyway); ``s`` the class weight of the target, as for the regularizer, so
    that a weighted mean stays a weighted mean of the z-loss too."""
    lse = (top + norm)[..., 0]
    value = spec.z_loss * (lse * lse)
    return value if target.scale is None else target.scale * value


def z_loss_p_coef(xp: Any, spec: Spec, target: Target, top: Any, norm: Any, g_pos: Any) -> Any:
    """``coef`` of ``coef * p``, the z-loss's share of ``dl/dz`` (``dlse/dz = p``), for the
    per-position cotangent ``g_pos``."""
    coef = (2.0 * spec.z_loss) * g_pos * (top + norm)[..., 0]
    return coef if target.scale is None else coef * target.scale


class Regularizer(NamedTuple):
    value: Any  # (xp, kernels, spec, target, finite log p, log p at the target) -> G
    gradient_onehot: Any  # (xp, spec, G, finite log p at the target, coef) -> OneHotGradient
    gradient_dense: Any  # (xp, spec, target, finite log p, p, G) -> dG/dz
    gradient_q: Any  # (xp, spec, target, p) -> dG/dq, or None where G does not read q
    reads_log_p_y: bool  # its value and one-hot gradient read log p at the target


REGULARIZERS = {
    "entropy": Regularizer(entropy_value, entropy_gradient_onehot, entropy_gradient_dense,
                           entropy_gradient_q, False),
    "reverse": Regularizer(reverse_value, reverse_gradient_onehot, reverse_gradient_dense,
                           reverse_gradient_q, True),
    "poly": Regularizer(poly_value, poly_gradient_onehot, poly_gradient_dense, poly_gradient_q,
                        True),
}


def reads_log_p_y(spec: Spec) -> bool:
    """Whether a term reads log p at a class-index target beyond cross entropy's
    ``-log p_y`` (a focal power, MIX-ENT's or Poly-1's term)."""
    return spec.gamma != 0 or (spec.regularizer is not None
                                and REGULARIZERS[spec.regularizer].reads_log_p_y)
