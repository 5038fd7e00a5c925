"""An independent float64 reference, in plain Python ``math``, one position at a time.

It shares no code with the package: it follows the definitions of DESIGN §3 literally
(the sums as written, no stabilising rewrites beyond subtracting the row maximum), so an
error in the package's vectorised math or its gradients cannot hide in both.
"""

from __future__ import annotations

import math

import numpy as np


def _row_terms(z, y, t, *, weight, label_smoothing, gamma, eps):
    """(F_gamma, H, R, s) for one position: z logits, y class index or None, t soft target."""
    num = len(z)
    top = max(z)
    if top == -math.inf:
        top = 0.0
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    log_p = [v - lse for v in z]
    p = [math.exp(v) for v in log_p]
    w = [1.0] * num if weight is None else list(weight)
    if t is None:
        q = [(1 - label_smoothing) * (c == y) + label_smoothing / num for c in range(num)]
        s = w[y]
    else:
        q = [(1 - label_smoothing) * t[c] + label_smoothing / num for c in range(num)]
        s = 1.0
    focal = 0.0
    for c in range(num):
        if w[c] * q[c] != 0:
            focal -= w[c] * q[c] * (1 - p[c]) ** gamma * log_p[c]
    ent = -sum(p[c] * log_p[c] for c in range(num) if p[c] > 0)
    rev = -sum(p[c] * math.log(q[c] + eps) for c in range(num))
    return focal, ent, rev, s


def loss(
    logits,
    target,
    *,
    kind="cross_entropy",
    axis=-1,
    weight=None,
    ignore_index=None,
    label_smoothing=0.0,
    reduction="mean",
    gamma=None,
    eps=1e-6,
    ce_weight=1.0,
    ce_base=math.e,
    reg_weight=1.0,
    reg_base=math.e,
):
    """The loss ``kind`` (a public function's name) of NumPy float64 inputs."""
    if gamma is None:
        gamma = {"adaptive_ce": 1.0, "focal": 2.0}.get(kind, 0.0)
    regularized = kind in ("min_ent", "mix_ent")
    if not regularized:
        reg_weight = 0.0
    z = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -1)
    num = z.shape[-1]
    rows = z.reshape(-1, num)
    soft = np.asarray(target).dtype.kind == "f"
    if soft:
        targets = np.moveaxis(np.asarray(target, dtype=np.float64), axis, -1).reshape(-1, num)
    else:
        targets = np.asarray(target).reshape(-1)
    losses, counted = [], 0.0
    for i in range(rows.shape[0]):
        zi = [float(v) for v in rows[i]]
        if not soft and ignore_index is not None and int(targets[i]) == ignore_index:
            losses.append(0.0)
            continue
        y, t = (None, [float(v) for v in targets[i]]) if soft else (int(targets[i]), None)
        focal, ent, rev, s = _row_terms(
            zi, y, t, weight=weight, label_smoothing=label_smoothing, gamma=gamma, eps=eps
        )
        reg = ent if kind == "min_ent" else rev
        value = ce_weight * focal / math.log(ce_base)
        if regularized:
            value += s * reg_weight * reg / math.log(reg_base)
        losses.append(value)
        counted += s
    out = np.array(losses, dtype=np.float64).reshape(z.shape[:-1])
    if reduction == "none":
        return out
    if reduction == "sum":
        return np.float64(sum(losses))
    denominator = float(out.size) if soft else counted
    return np.float64(sum(losses) / denominator) if denominator > 0 else np.float64(math.nan)
