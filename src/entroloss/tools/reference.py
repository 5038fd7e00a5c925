"""A float64 NumPy reference for ``entroloss verify``, independent of ``_math``.

It builds the dense target distribution and evaluates the definitions of the math page
literally; gradients come from central finite differences of it, never from the
package's hand-derived backward. Slow and simple on purpose: it is a yardstick.
"""

from __future__ import annotations

import math

import numpy as np


def loss(logits, target, name, *, axis=-1, weight=None, ignore_index=None, label_smoothing=0.0,
         reduction="mean", gamma=0.0, eps=1e-6, ce_weight=1.0, ce_base=math.e,
         reg_weight=0.0, reg_base=math.e):
    z = np.moveaxis(np.asarray(logits, np.float64), axis, -1)
    classes = z.shape[-1]
    top = np.max(z, axis=-1, keepdims=True)
    top = np.where(np.isneginf(top), 0.0, top)
    log_p = z - top - np.log(np.sum(np.exp(z - top), axis=-1, keepdims=True))
    p = np.exp(log_p)
    w = np.ones(classes) if weight is None else np.asarray(weight, np.float64)
    soft = np.asarray(target).dtype.kind == "f"
    if soft:
        onehot = np.moveaxis(np.asarray(target, np.float64), axis, -1)
        keep = np.ones(z.shape[:-1], bool)
        s = np.ones(z.shape[:-1])
    else:
        y = np.asarray(target)
        keep = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
        y = np.where(keep, y, 0)
        onehot = np.eye(classes)[y]
        s = w[y]
    q = (1 - label_smoothing) * onehot + label_smoothing / classes
    with np.errstate(invalid="ignore", divide="ignore"):
        focal = np.where(w * q > 0, -w * q * (1 - p) ** gamma * log_p, 0.0).sum(-1)
        entropy = -np.where(p > 0, p * log_p, 0.0).sum(-1)
    reverse = -(p * np.log(q + eps)).sum(-1)
    reg = {"min_ent": entropy, "mix_ent": reverse}.get(name, 0.0)
    per = ce_weight * focal / math.log(ce_base) + s * reg_weight * reg / math.log(reg_base)
    per = np.where(keep, per, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    denominator = per.size if soft else np.sum(np.where(keep, s, 0.0))
    return per.sum() / denominator if denominator > 0 else math.nan


def gradient(logits, target, name, *, step=1e-6, **options):
    """Central differences of ``sum(loss)`` with respect to the logits."""
    logits = np.asarray(logits, np.float64)
    grad = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (np.sum(loss(up, target, name, **options))
                       - np.sum(loss(down, target, name, **options))) / (2 * step)
    return grad
