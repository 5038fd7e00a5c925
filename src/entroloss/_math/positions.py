"""Per position (classes last): the loss, its terms, and their gradients.

Every loss is ``l = ce_weight * F / ln(ce_base) + s * reg_weight * G / ln(reg_base)``
(``terms.py`` has F and G). ``loss_terms`` evaluates it at every position of a batch or a
chunk of rows; ``gradients`` turns per-position cotangents into ``dl/dz`` and the four
scalars' gradients.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import terms
from .primitives import Kernels, compute_dtype, in_dtype, ln, row_stats_of_slices
from .spec import Inputs, Residuals, Scalars, Spec
from .target import Target

__all__ = ["PerPosition", "Asked", "loss_terms", "gradients", "classes_last",
           "class_axis_back"]


class PerPosition(NamedTuple):
    loss: Any  # 0 at ignored positions, NaN at unusable indices
    main: Any  # F
    reg: Any  # G, or None
    row_max: Any
    log_norm: Any
    denominator: Any  # the mean's divisor over these positions (reduction="mean" only)

    def residuals(self, logits: Any) -> Residuals:
        """What the backward keeps of these positions, with their ``logits``."""
        return Residuals(logits, self.row_max, self.log_norm, self.main, self.reg,
                         self.denominator)


class Asked(NamedTuple):
    """What :func:`gradients` forms besides ``dl/dz`` and the scalars' sums: a soft
    target's gradient (``target``), the scalars' gradients per position, unreduced
    (``per_position``)."""

    target: bool = False
    per_position: bool = False
    # the logits are a buffer of the caller's own, read no more: dl/dz may be written into
    # it (the linear head's chunk; never a caller's logits)
    overwrite: bool = False


class Coefficients(NamedTuple):
    """Per position, the factor each term enters ``l`` with (cotangent x weight / ln
    base): the main term's, the regularizer's (or None), the z-loss's (or None)."""

    main: Any
    reg: Any
    z_loss: Any


def classes_last(xp: Any, spec: Spec, logits: Any, dtype: Any) -> Any:
    """The logits in ``dtype`` with the class axis last."""
    z = in_dtype(xp, logits, dtype)
    return z if spec.axis == z.ndim - 1 else xp.moveaxis(z, spec.axis, -1)


def class_axis_back(xp: Any, spec: Spec, x: Any) -> Any:
    """An array with classes last back in the logits' layout (None stays None)."""
    if x is None or spec.axis == x.ndim - 1:
        return x
    return xp.moveaxis(x, -1, spec.axis)


def times(xp: Any, x: Any, factor: Any) -> Any:
    """The main term's ``x * factor``: :func:`by`, and a main term weighted by the Python
    number 0 is absent: 0, not ``0 * inf = NaN`` where it is +inf (the main term of
    ``entropy``, MIN-ENT with ``ce_weight=0``, at a masked class of its stand-in target)."""
    if isinstance(factor, float) and factor == 0.0:
        return xp.zeros_like(x)
    return by(x, factor)


def by(x: Any, factor: Any) -> Any:
    """``x * factor``, skipped for a factor that is the Python number 1 (the default
    weight and natural log: a pass less per call, the same numbers)."""
    return x if isinstance(factor, float) and factor == 1.0 else x * factor


def _scalar(xp: Any, value: Any, dtype: Any) -> Any:
    return value if isinstance(value, (int, float)) else in_dtype(xp, value, dtype)


def read_target(xp: Any, spec: Spec, z: Any, inputs: Inputs) -> tuple[Target, Scalars]:
    """The target as ``w * q`` and the four scalars, classes last and in the dtype of
    ``z``, the logits with classes last (the sample weights, of the positions' shape, are
    in that layout already: moving the class axis last keeps the other axes' order)."""
    target, weight, scalars, sample_weight = inputs
    if spec.soft and spec.axis != z.ndim - 1:
        target = xp.moveaxis(target, spec.axis, -1)
    w = None if weight is None else in_dtype(xp, weight, z.dtype)
    sw = None if sample_weight is None else in_dtype(xp, sample_weight, z.dtype)
    return (Target(xp, spec, target, w, tuple(z.shape), z.dtype, sw),
            Scalars(*(_scalar(xp, v, z.dtype) for v in scalars)))


def loss_terms(xp: Any, kernels: Kernels, spec: Spec, logits: Any, inputs: Inputs,
               log_p: Any = None) -> PerPosition:
    """The loss and its terms per position. ``log_p``: log p of ``logits`` as the caller's
    library computes it in one native op (torch's ``log_softmax``) with the definition's
    numbers, classes last, where the call has no cap, z-loss or class slices (nothing
    else reads the row statistics); the row statistics are then not built (``row_max``
    and ``log_norm`` are None: no residuals for :func:`gradients`)."""
    z = classes_last(xp, spec, logits, compute_dtype(xp, logits.dtype))
    if spec.softcap is not None:
        z = kernels.soft_cap(xp, z, spec.softcap)
    tgt, s = read_target(xp, spec, z, inputs)
    if log_p is not None:
        top = norm = None
        lp = log_p
    else:
        top, norm = (kernels.row_stats(xp, z) if spec.classes is None
                     else row_stats_of_slices(xp, kernels, z, spec.classes.group))
        # log p in full only where a term reads every class; else only at the target
        lp = kernels.log_p(xp, z, top, norm) if not tgt.sparse or spec.regularizer else None
    log_p_y = None
    if tgt.sparse and lp is not None and tgt.mine is None:
        # from log p in full, cross entropy at the target is one kernel (torch's nll_loss
        # where a gather, a squeeze and a negation would be three)
        nll = tgt.nll_at_target(kernels, lp)
        log_p_y = -nll if terms.reads_log_p_y(spec) else None
        main = tgt.weighted_sum(nll) if spec.gamma == 0 else terms.main_value(xp, spec, tgt, log_p_y)
    else:
        log_p_y = tgt.log_p_at_target(kernels, z, top, norm, lp) if tgt.sparse else None
        main = terms.main_value(xp, spec, tgt, lp if log_p_y is None else log_p_y)
    loss = times(xp, main, s.ce_weight / ln(xp, s.ce_base))
    reg = None
    if spec.regularizer is not None:
        # past the main term log p is only exponentiated or multiplied by p: a masked
        # class's -inf becomes a finite floor, so that p log p is 0 there (not 0 * -inf)
        finite = kernels.finite_log_p(xp, lp)
        reg = terms.REGULARIZERS[spec.regularizer].value(xp, kernels, spec, tgt, finite, log_p_y)
        scaled = reg if tgt.scale is None else tgt.scale * reg
        loss = loss + by(scaled, s.reg_weight / ln(xp, s.reg_base))
    if spec.z_loss:
        loss = loss + terms.z_loss_value(xp, spec, tgt, top, norm)
    if tgt.sample_weight is not None:  # the whole position's loss, z-loss included
        loss = loss * tgt.sample_weight
    if tgt.valid is not None:
        loss = xp.where(tgt.valid, loss, 0.0)
        main = xp.where(tgt.valid, main, 0.0)
        reg = None if reg is None else xp.where(tgt.valid, reg, 0.0)
    if tgt.invalid is not None:
        loss = xp.where(tgt.invalid, math.nan, loss)
    denominator = tgt.mean_denominator(loss) if spec.reduction == "mean" else None
    return PerPosition(loss, main, reg, top, norm, denominator)


def gradients(xp: Any, kernels: Kernels, spec: Spec, kept: Residuals, inputs: Inputs,
              g_pos: Any, asked: Asked = Asked()) -> tuple:
    """``(dl/dz, the scalars' gradients, dl/dt)`` for per-position cotangents ``g_pos``:
    ``dl/dz`` classes last in the compute dtype; a scalar's gradient None where it is a
    Python float, summed over the positions unless ``asked.per_position``; ``dl/dt``
    (classes last) for a soft target when ``asked.target``, else None. ``kept`` is what
    the forward kept of these positions: their logits in the spec's layout, not capped
    (the cap is redone here), and the numbers per position."""
    z = classes_last(xp, spec, kept.logits, kept.main.dtype)
    slope = None
    if spec.softcap is not None:
        z, slope = kernels.soft_cap_with_slope(xp, z, spec.softcap)
    tgt, s = read_target(xp, spec, z, inputs)
    if tgt.sample_weight is not None:  # l_i = sw_i * (every term): its cotangent is sw_i g_i
        g_pos = g_pos * tgt.sample_weight
    if tgt.valid is not None:
        g_pos = xp.where(tgt.valid, g_pos, 0.0)
    if tgt.invalid is not None:  # an unchecked out-of-range index: a NaN row, not a number
        g_pos = xp.where(tgt.invalid, math.nan, g_pos)
    coefs, d_scalars = _coefficients(xp, spec, tgt, s, kept, g_pos, asked.per_position)
    gradient = _onehot_gradient if tgt.sparse else _dense_gradient
    dz = gradient(xp, kernels, spec, tgt, z, kept, coefs, asked.overwrite)
    if slope is not None:  # the chain rule through the cap
        dz = kernels.times_slope(xp, dz, slope)
    if tgt.valid is not None:  # even NaN logits at an ignored position get no gradient
        dz = kernels.zero_rows(xp, dz, tgt.valid)
    d_target = None
    if asked.target and spec.soft:
        d_target = _target_gradient(xp, kernels, spec, tgt, z, kept, coefs)
    return dz, d_scalars, d_target


def _coefficients(xp: Any, spec: Spec, tgt: Target, s: Scalars, kept: Residuals, g_pos: Any,
                  per_position: bool) -> tuple[Coefficients, Scalars]:
    """Per position, the factors the terms enter ``l`` with; and the scalars' gradients:
    for ``T * weight / ln(b)``, ``d/dweight = T / ln b`` and
    ``d/db = -T weight / (b ln(b)^2)``."""
    main, reg = kept.main, kept.reg
    learnt = s.learnt()
    total = (lambda x: x) if per_position else xp.sum
    ln_cb = ln(xp, s.ce_base)
    c_main = times(xp, g_pos, s.ce_weight / ln_cb)
    c_reg = d_cw = d_cb = d_rw = d_rb = None
    if reg is not None:
        ln_rb = ln(xp, s.reg_base)
        g_reg = g_pos if tgt.scale is None else g_pos * tgt.scale
        c_reg = by(g_reg, s.reg_weight / ln_rb)
        if learnt.reg_weight or learnt.reg_base:
            r_sum = total(g_reg * reg)
            d_rw = r_sum / ln_rb
            d_rb = -r_sum * s.reg_weight / (s.reg_base * ln_rb**2)
    if learnt.ce_weight or learnt.ce_base:
        m_sum = total(g_pos * main)
        d_cw = m_sum / ln_cb
        d_cb = -m_sum * s.ce_weight / (s.ce_base * ln_cb**2)
    d_scalars = Scalars(*(d if wanted else None
                          for wanted, d in zip(learnt, (d_cw, d_cb, d_rw, d_rb), strict=True)))
    c_z = None
    if spec.z_loss:
        c_z = terms.z_loss_p_coef(xp, spec, tgt, kept.row_max, kept.log_norm, g_pos)
    return Coefficients(c_main, c_reg, c_z), d_scalars


def _regularizer(spec: Spec) -> terms.Regularizer | None:
    return None if spec.regularizer is None else terms.REGULARIZERS[spec.regularizer]


def _onehot_gradient(xp: Any, kernels: Kernels, spec: Spec, tgt: Target, z: Any,
                     kept: Residuals, c: Coefficients, overwrite: bool) -> Any:
    top, norm = kept.row_max, kept.log_norm
    regularizer = _regularizer(spec)
    log_p_y = None  # cross entropy's gradient does not read p_y
    if terms.reads_log_p_y(spec):
        log_p_y = kernels.finite_log_p(xp, tgt.log_p_at_target(kernels, z, top, norm))
    grad = terms.main_gradient_onehot(xp, spec, tgt, log_p_y, c.main)
    if regularizer is not None:
        grad = terms.combine(grad, regularizer.gradient_onehot(xp, spec, kept.reg, log_p_y, c.reg))
    if c.z_loss is not None:  # the z-loss's gradient is a multiple of p: one more coefficient
        grad = grad._replace(p_coef=grad.p_coef + c.z_loss)
    return kernels.softmax_affine(xp, z, top, norm, grad.p_coef[..., None], tgt.index,
                                  tgt.onehot_coef(grad.onehot_coef), grad.log_p_coef,
                                  overwrite=overwrite)


def _dense_gradient(xp: Any, kernels: Kernels, spec: Spec, tgt: Target, z: Any,
                    kept: Residuals, c: Coefficients, overwrite: bool) -> Any:
    lp = kernels.finite_log_p(xp, kernels.log_p(xp, z, kept.row_max, kept.log_norm))
    p = xp.exp(lp)
    dz = c.main[..., None] * terms.main_gradient_dense(xp, spec, tgt, lp, p)
    if spec.regularizer is not None:
        regularizer = terms.REGULARIZERS[spec.regularizer]
        dz = dz + c.reg[..., None] * regularizer.gradient_dense(xp, spec, tgt, lp, p, kept.reg)
    if c.z_loss is not None:
        dz = dz + c.z_loss[..., None] * p
    return dz


def _target_gradient(xp: Any, kernels: Kernels, spec: Spec, tgt: Target, z: Any,
                     kept: Residuals, c: Coefficients) -> Any:
    """``dl/dt = (1 - label_smoothing) dl/dq`` for a soft target."""
    lp = kernels.log_p(xp, z, kept.row_max, kept.log_norm)
    d_q = c.main[..., None] * terms.main_gradient_q(xp, spec, tgt, lp)
    regularizer = _regularizer(spec)
    if regularizer is not None:
        share = regularizer.gradient_q(xp, spec, tgt, xp.exp(lp))
        if share is not None:
            d_q = d_q + c.reg[..., None] * share
    return tgt.keep * d_q
