"""An independent float64 reference of every loss, in plain Python ``math``, one position at
a time; gradients by central finite differences of it.

It shares no code with the package's math (``entroloss._math``, ``entroloss._api``): it
follows the definitions of ``docs/math.md`` literally (the sums as written, no stabilising
rewrites beyond subtracting the row maximum), so an error in the package's vectorised math
or its hand-derived gradients cannot hide in both. It reads only the declarative registry
(``entroloss._losses``): which regularizer and focal exponent a loss has, which public
keywords name its weights and bases; each term's formula comes with the term's entry there
(``Term.reference``, plain Python next to the vectorised math it checks). Slow and simple
on purpose: it is a yardstick, used by ``entroloss verify`` and by the test suite.

Both functions take a loss by its public name and exactly the public keyword arguments,
with the public defaults::

    loss("min_ent", logits, target, entropy_weight=0.5, reduction="sum")
    gradient("min_ent", logits, target, entropy_weight=0.5, reduction="sum")
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .._losses import SLOT_DEFAULTS, Position, by_name, focal_reference

__all__ = ["loss", "gradient", "central_differences", "resolve_options", "STEP"]

# The options every loss takes, with the public defaults. ``validate`` and ``chunk_size``
# say how a loss is computed, not what: accepted, so one options dict serves both the
# public function and the reference, and ignored. ``class_group`` and ``class_axis`` say
# where the classes are: the reference holds them all, so only None is accepted.
COMMON = {"axis": -1, "weight": None, "ignore_index": None, "label_smoothing": 0.0,
          "reduction": "mean", "validate": True, "chunk_size": None, "softcap": None,
          "z_loss": 0.0, "sample_weight": None, "denominator": None, "class_group": None,
          "class_axis": None}
STEP = 1e-6  # the central-difference step of ``gradient``


def resolve_options(name: str, **options: Any) -> dict:
    """The options of ``name`` with every default filled in and the weights and bases mapped
    to the four terms of the shared formula (``docs/math.md``)::

        l = ce_weight * F_gamma / ln(ce_base)  +  s * reg_weight * G / ln(reg_base)

    Returns a dict of ``ce_weight, ce_base, reg_weight, reg_base``, ``regularizer`` (the
    registry's :class:`~entroloss._losses.Term` or None), ``gamma``, the loss's own options
    and the common options. A keyword the public function does not take is a
    ``TypeError``, as it is there."""
    definition = by_name(name)
    allowed = set(COMMON) | set(definition.option_names())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword arguments {unknown}")
    out = {key: options.get(key, default) for key, default in COMMON.items()}
    for where in ("class_group", "class_axis"):
        if out[where] is not None:
            raise ValueError(f"the reference computes the loss of every class in one process; "
                             f"call it with {where}=None on the gathered logits")
    out.update(SLOT_DEFAULTS)
    for public, slot in definition.scalars.items():
        out[slot] = float(options.get(public, definition.scalar_default(public)))
    for option in definition.options:
        out[option.name] = float(options.get(option.name, option.default))
    out["regularizer"] = definition.regularizer
    out["gamma"] = out["gamma"] if definition.gamma is None else definition.gamma
    if out["weight"] is not None:
        out["weight"] = [float(v) for v in np.asarray(out["weight"], dtype=np.float64)]
    return out


def _soft_cap(v: float, cap: float) -> float:
    """Gemma 2's ``cap * tanh(v / cap)``; -inf (a masked class) stays -inf."""
    return -math.inf if v == -math.inf else cap * math.tanh(v / cap)


def _position(z, y, t, o) -> tuple:
    """(the position as the registry's terms read it, s, logsumexp(z)) for one position:
    z logits, y class index or None, t soft target."""
    num = len(z)
    top = max(z)
    if top == -math.inf:
        top = 0.0
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    log_p = [v - lse for v in z]
    p = [math.exp(v) for v in log_p]
    w = [1.0] * num if o["weight"] is None else list(o["weight"])
    smoothing = o["label_smoothing"]
    if t is None:
        q = [(1 - smoothing) * (c == y) + smoothing / num for c in range(num)]
        s = w[y]
    else:
        q = [(1 - smoothing) * t[c] + smoothing / num for c in range(num)]
        s = 1.0
    return Position(p, log_p, q, w, o), s, lse


def loss(name: str, logits, target, /, **options: Any) -> np.ndarray:
    """The loss ``name`` (a public function's name, e.g. ``"min_ent"``) of NumPy inputs, in
    float64, for the public keyword ``options``: a 0-d array for "mean" and "sum", one
    value per position for "none"."""
    o = resolve_options(name, **options)
    axis = o["axis"]
    z = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -1)
    num = z.shape[-1]
    rows = z.reshape(-1, num)
    soft = np.asarray(target).dtype.kind == "f"
    targets: np.ndarray  # (rows, classes) soft, (rows,) class indices
    if soft:
        targets = np.moveaxis(np.asarray(target, dtype=np.float64), axis, -1).reshape(-1, num)
    else:
        targets = np.asarray(target).reshape(-1)
    # one weight per position, in the positions' order (the logits' shape minus the class
    # axis, which moving that axis last keeps)
    weights = ([1.0] * rows.shape[0] if o["sample_weight"] is None else
               [float(v) for v in np.asarray(o["sample_weight"], dtype=np.float64).reshape(-1)])
    losses, counted = [], 0.0
    for i in range(rows.shape[0]):
        zi = [float(v) for v in rows[i]]
        if o["softcap"] is not None:
            zi = [_soft_cap(v, o["softcap"]) for v in zi]
        if not soft and o["ignore_index"] is not None and int(targets[i]) == o["ignore_index"]:
            losses.append(0.0)
            continue
        y, t = (None, [float(v) for v in targets[i]]) if soft else (int(targets[i]), None)
        position, s, lse = _position(zi, y, t, o)
        value = o["ce_weight"] * focal_reference(position) / math.log(o["ce_base"])
        if o["regularizer"] is not None:
            reg = o["regularizer"].reference(position)
            value += s * o["reg_weight"] * reg / math.log(o["reg_base"])
        if o["z_loss"]:  # PaLM's z-loss, weighted by s as the regularizer is
            value += s * o["z_loss"] * lse**2
        # a position's weight scales its whole loss, and its count in the mean's divisor
        losses.append(weights[i] * value)
        counted += weights[i] * s
    out = np.array(losses, dtype=np.float64).reshape(z.shape[:-1])
    if o["reduction"] == "none":
        return out
    if o["reduction"] == "sum":
        return np.float64(sum(losses))
    if o["denominator"] is not None:  # the caller's divisor (the whole step's), as it is
        return np.float64(sum(losses) / float(o["denominator"]))
    denominator = (sum(weights) if soft else counted)
    return np.float64(sum(losses) / denominator) if denominator > 0 else np.float64(math.nan)


def central_differences(f: Callable[[np.ndarray], float], x, *, step: float = STEP,
                        where=None) -> np.ndarray:
    """``d f / d x`` by central differences, in float64: ``(f(x + h e_i) - f(x - h e_i)) /
    2h`` for each entry ``i`` of ``x`` (a 0-d array for a scalar). Entries where ``where``
    is False (by default: the non-finite ones, such as -inf masked logits, which have no
    gradient) are not moved and get 0."""
    x = np.asarray(x, dtype=np.float64)
    where = np.isfinite(x) if where is None else np.broadcast_to(where, x.shape)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        if not where[index]:
            continue
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (float(f(up)) - float(f(down))) / (2 * step)
    return grad


def gradient(name: str, logits, target, /, **options: Any) -> np.ndarray:
    """``d sum(loss(name, logits, target, **options)) / d logits`` by central differences
    (step ``STEP``), in float64; non-finite logits get 0. For finite losses only."""
    resolve_options(name, **options)  # an unknown keyword fails here, not once per entry

    def total(z):
        return float(np.sum(loss(name, z, target, **options)))

    return central_differences(total, logits)
