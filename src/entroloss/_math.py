"""The loss math, written once against the Python array API standard.

Everything here takes the array namespace ``xp`` as its first argument and uses only
standard functions on it: no NumPy, torch or JAX calls, no in-place writes, no Python
loops over samples. The test suite runs this module on ``array_api_strict`` to prove it.

Every loss of the package is one instance of

    l_i = ce_weight * F_gamma / ln(ce_base)  +  s_i * reg_weight * G / ln(reg_base)

where ``F_gamma = -sum_c w_c q_c (1 - p_c)^gamma log p_c`` (gamma = 0 is cross entropy,
gamma = 1 the linearly adaptive loss), ``G`` is the prediction's entropy ``H`` (MIN-ENT),
the reverse cross entropy ``R = -sum_c p_c log(q_c + eps)`` (MIX-ENT) or absent, and
``s_i`` is the class weight of the target class (1 for soft targets).

:func:`forward` returns the reduced loss and the residuals that :func:`backward` needs to
turn a cotangent of the loss into gradients for the logits and the four scalar
parameters. The adapters in ``entroloss.backends`` attach that pair to each framework's
autograd; none of them re-derives anything. ``docs/math.md`` derives every gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Spec", "PARAM_NAMES", "forward", "backward", "log_softmax", "softmax", "entropy"]

# The four scalar parameters every loss is written with, in a fixed order. Each may be a
# Python float or a 0-d array of the logits' namespace (then it can be learnt).
PARAM_NAMES = ("ce_weight", "ce_base", "reg_weight", "reg_base")


@dataclass(frozen=True)
class Spec:
    """The static part of one loss evaluation (hashable, so JAX can treat it as static).

    ``axis`` is normalised to a non-negative int. ``regularizer`` is ``None``,
    ``"entropy"`` or ``"reverse"``. ``soft`` says the target holds a probability vector
    per position rather than a class index.
    """

    axis: int
    soft: bool
    reduction: str = "mean"
    gamma: float = 0.0
    regularizer: str | None = None
    eps: float = 1e-6
    label_smoothing: float = 0.0
    ignore_index: int | None = None
    indices_checked: bool = False  # validation read the class indices: all in range
    chunk_size: int | None = None  # rows per chunk: bounded memory (see forward)


# --- primitives, with native kernels where a framework has them ---------------------------
#
# Like scipy.special, a primitive has one array-API definition here, and an adapter may
# register a native kernel for its namespace (``NATIVE[xp.__name__][name]``) that computes
# the same thing faster; see backends/torch.py. The loss definitions never change with
# the backend.
NATIVE: dict = {}


def _primitive(xp: Any, name: str, generic: Any) -> Any:
    # keyed by the namespace's name: torch.compile can trace a str lookup, not a module one
    table = NATIVE.get(xp.__name__)
    return generic if table is None else table.get(name, generic)


def _row_stats(xp: Any, z: Any) -> tuple:
    """Per row (classes last, keepdims): the maximum ``m`` and ``lt = log(sum(exp(z - m)))``,
    so that ``log p = (z - m) - lt``. Both are 0 for a row of only -inf, whose log p is
    then -inf throughout (no probability anywhere)."""
    m = xp.max(z, axis=-1, keepdims=True)
    m = xp.where(m == -math.inf, 0.0, m)
    total = _primitive(xp, "sum_exp_shifted", _sum_exp_shifted)(xp, z, m)
    return m, xp.log(xp.where(total == 0, 1.0, total))


def _sum_exp_shifted(xp: Any, z: Any, m: Any) -> Any:
    return xp.sum(xp.exp(z - m), axis=-1, keepdims=True)


def _log_p(xp: Any, z: Any, m: Any, lt: Any) -> Any:
    """``(z - m) - lt``: ``m`` subtracted first keeps log p exact for logits with a large
    common offset (``z - logsumexp(z)`` would lose it to rounding)."""
    return (z - m) - lt


def _softmax_affine(xp: Any, z: Any, m: Any, lt: Any, alpha: Any, index: Any, beta: Any,
                    log_p_scale: Any = None) -> Any:
    """``p * (alpha + log_p_scale * log p) + onehot(index) * beta``, with ``p`` and log p
    from the logits and their row statistics, and ``alpha`` of shape ``(..., 1)``: the
    gradient of every loss with a class-index target, MIN-ENT's ``-p (log p + H)``
    included. A native kernel may build it in place.

    ``p = exp(z - m) / exp(lt)``: ``exp(z - m)`` is the forward's own (the row sums), which
    a compiler then computes once for both passes, as it does for its own cross entropy.
    """
    hot = index == xp.arange(z.shape[-1], dtype=index.dtype, device=_device(index))
    factor = alpha
    if log_p_scale is not None:  # only a product with log p needs it finite (exp(-inf) = 0)
        factor = alpha + log_p_scale[..., None] * _finite_log_p(xp, _log_p(xp, z, m, lt))
    scaled = xp.exp(z - m) * (factor / xp.exp(lt))
    return xp.where(hot, scaled + beta[..., None], scaled)


def _mass_off_target(xp: Any, log_p: Any, index: Any) -> Any:
    """``sum_{c != y} p_c``, summed from its small terms: ``1 - p_y`` would round away."""
    hot = index == xp.arange(log_p.shape[-1], dtype=index.dtype, device=_device(index))
    return xp.sum(xp.where(hot, 0.0, xp.exp(log_p)), axis=-1)


def _sum_p_log_p(xp: Any, log_p: Any) -> Any:
    """``sum_c p_c log p_c`` over the last axis (``log_p`` finite): minus the entropy."""
    return xp.sum(xp.exp(log_p) * log_p, axis=-1)


def log_softmax(xp: Any, z: Any, axis: int = -1) -> Any:
    """``(z - m) - log(sum(exp(z - m)))`` along ``axis``, ``m`` the row maximum, as
    :func:`_row_stats` and :func:`_log_p` compute it for the losses (written out here along
    any axis, for the public function and the framework's own autograd).

    A row whose logits are all -inf has no probability anywhere: its log p is -inf
    throughout (so a loss on it is +inf, not NaN). NaN and +inf give NaN.
    """
    m = xp.max(z, axis=axis, keepdims=True)
    m = xp.where(m == -math.inf, 0.0, m)
    shifted = z - m
    total = xp.sum(xp.exp(shifted), axis=axis, keepdims=True)
    return shifted - xp.log(xp.where(total == 0, 1.0, total))


def softmax(xp: Any, z: Any, axis: int = -1) -> Any:
    return xp.exp(log_softmax(xp, z, axis))


def _finite_log_p(xp: Any, log_p: Any) -> Any:
    # Below the floor (-inf for a masked class, or a class masked with finfo.min), log p
    # becomes the floor, so p * log p is 0 there instead of 0 * -inf = NaN, and a
    # coefficient times it cannot overflow; NaN stays NaN (NaN < floor is False). The floor
    # is -sqrt(max): far below any log p whose p is not 0 (exp of it is 0).
    floor = -math.sqrt(float(xp.finfo(log_p.dtype).max))
    return xp.where(log_p < floor, floor, log_p)  # elementwise (dask keeps its chunks)


def entropy(xp: Any, z: Any, axis: int = -1) -> Any:
    """Entropy of ``softmax(z)`` along ``axis`` in nats (an autograd-friendly composition:
    no native kernels, which are for the losses' own forward and backward)."""
    log_p = log_softmax(xp, z, axis)
    return 0.0 - xp.sum(xp.exp(log_p) * _finite_log_p(xp, log_p), axis=axis)  # +0, not -0


def _compute_dtype(xp: Any, dtype: Any) -> Any:
    # Half precisions are computed in float32: their exp/log/sums lose too much otherwise.
    # (no `dtype == None` test: NumPy reads dtype(None) as float64)
    halves = [getattr(xp, name) for name in ("float16", "bfloat16") if hasattr(xp, name)]
    if any(dtype == half for half in halves):
        return xp.float32
    return dtype


def _ln(xp: Any, base: Any) -> Any:
    return math.log(base) if isinstance(base, (int, float)) else xp.log(base)


# --- the target, seen as a distribution q with class weights w ---------------------------


class _Target:
    """The target as class weights ``w`` times a distribution ``q``, per position.

    A class index without label smoothing stays sparse: the one-hot part is gathered, so
    nothing of the logits' size is built for it. Soft targets and smoothed indices get
    the dense ``w * q``.
    """

    def __init__(self, xp: Any, spec: Spec, target: Any, weight: Any, shape: tuple, dtype: Any):
        self.xp, self.spec = xp, spec
        self.num_classes = shape[-1]
        self.smooth = spec.label_smoothing / self.num_classes  # the uniform part of q
        self.keep = 1.0 - spec.label_smoothing  # the share of q the target itself keeps
        # scale: s_i, the target class's weight
        self.valid = self.invalid = self.usable = self.index = self.scale = None
        if spec.soft:
            self.q = self.keep * xp.astype(target, dtype) + self.smooth
        else:
            if spec.ignore_index is not None:
                self.valid = target != spec.ignore_index
            # Out-of-range indices are refused by validation when the data can be read;
            # where it cannot (jax.jit, validate=False) their positions become NaN.
            if not spec.indices_checked:
                self.invalid = (target < 0) | (target >= self.num_classes)
                if self.valid is not None:
                    self.invalid = self.invalid & self.valid
            usable = self.valid
            if self.invalid is not None:
                usable = ~self.invalid if usable is None else usable & ~self.invalid
            if usable is not None:
                target = xp.where(usable, target, 0)
            # where a position is ignored (or invalid), its stand-in index 0 must carry
            # no mass: class 0's term could be +inf there and meet a zero weight
            self.usable = usable
            index_dtype = xp.__array_namespace_info__().default_dtypes()["indexing"]
            self.index = xp.astype(target, index_dtype)[..., None]
            if weight is not None:
                self.scale = xp.reshape(xp.take(weight, xp.reshape(self.index, (-1,))), target.shape)
            self.q = None
            if self.smooth > 0:
                cold = xp.full(shape, self.smooth, dtype=dtype, device=_device(target))
                self.q = xp.where(self.one_hot(), self.keep + self.smooth, cold)
        self.wq = None
        if self.q is not None:
            self.wq = self.q if weight is None else weight * self.q
            if self.usable is not None:
                self.wq = xp.where(self.usable[..., None], self.wq, 0.0)

    def log_p_at_target(self, z: Any, m: Any, lt: Any) -> Any:
        """``log p[..., y]`` per position (sparse targets only), from the logits and their
        row statistics: nothing of the logits' size is built. 0 where the position is
        ignored or its index unusable (its stand-in class carries no mass)."""
        xp = self.xp
        if hasattr(xp, "take_along_axis"):
            z_y = xp.take_along_axis(z, self.index, axis=-1)
        else:  # dask has none: select with the one-hot mask (where, so -inf elsewhere is harmless)
            z_y = xp.sum(xp.where(self.one_hot(), z, 0.0), axis=-1, keepdims=True)
        picked = _log_p(xp, z_y, m, lt)[..., 0]
        return picked if self.usable is None else xp.where(self.usable, picked, 0.0)

    def one_hot(self) -> Any:
        xp = self.xp
        classes = xp.arange(self.num_classes, dtype=self.index.dtype, device=_device(self.index))
        return self.index == classes

    def weighted_sum(self, values: Any) -> Any:
        """``sum_c w_c q_c values_c`` per position, where ``values`` is either the full
        array (dense targets) or ``values[..., y]`` (sparse ones, see :attr:`wq`).

        Entries with ``w_c q_c = 0`` contribute exactly 0, even where the value is +inf
        (a masked class), so no ``0 * inf`` NaN appears. Negative ``w_c q_c`` (only
        reachable unchecked, under jit or ``validate=False``) is kept, as the backward does.
        """
        xp = self.xp
        if self.wq is None:
            if self.scale is None:
                return values
            return self.scale * xp.where(self.scale != 0, values, 0.0)
        safe = xp.where(self.wq != 0, values, 0.0)
        return xp.sum(self.wq * safe, axis=-1)

    def reverse_log(self) -> Any:
        """``a_c = -log(q_c + eps)`` (dense targets; MIX-ENT). Where ``q_c = 0`` it is
        ``-log(eps)`` taken in Python: an eps below the dtype's range would round to 0."""
        xp = self.xp
        zero = self.q == 0
        inside = xp.where(zero, 1.0, self.q + self.spec.eps)  # no log(0), even transiently
        return xp.where(zero, -math.log(self.spec.eps), -xp.log(inside))


def _device(x: Any) -> Any:
    from array_api_compat import device

    return device(x)


# --- per-position terms ------------------------------------------------------------------


def _focal_factor(xp: Any, log_p: Any, gamma: float) -> Any:
    """``(1 - p)^gamma``, computed from log p so that 1 - p keeps its precision near p = 1."""
    if gamma == 0:
        return None
    one_minus_p = -xp.expm1(log_p)
    return one_minus_p if gamma == 1 else one_minus_p**gamma


def _focal_values(xp: Any, log_p: Any, gamma: float) -> Any:
    """``f(p) = -(1 - p)^gamma log p`` elementwise."""
    factor = _focal_factor(xp, log_p, gamma)
    return -log_p if factor is None else -factor * log_p


def _focal_slopes(xp: Any, log_p: Any, gamma: float) -> Any:
    """``p f'(p) = gamma p (1-p)^(gamma-1) log p - (1-p)^gamma`` elementwise (``log_p``
    finite).

    Written as ``gamma * (p log p) * (1-p)^(gamma-1)`` so that it stays finite for
    gamma < 1 as p -> 1 (its limit there is 0) and at masked classes (p = 0).
    """
    if gamma == 0:
        return -xp.ones_like(log_p)
    one_minus_p = -xp.expm1(log_p)
    p = xp.exp(log_p)
    plogp = p * log_p
    if gamma == 1:
        tail = plogp
    else:
        positive = one_minus_p > 0
        safe = xp.where(positive, one_minus_p, 1.0)
        tail = xp.where(positive, plogp * safe ** (gamma - 1), 0.0)
    return gamma * tail - _focal_factor(xp, log_p, gamma)


# --- forward and backward ---------------------------------------------------------------


def _scalar(xp: Any, value: Any, dtype: Any) -> Any:
    return value if isinstance(value, (int, float)) else xp.astype(value, dtype, copy=False)


def _setup(xp: Any, spec: Spec, shape: tuple, target: Any, weight: Any, params: tuple,
           dtype: Any) -> tuple:
    """The target seen as ``w * q`` and the four scalars, in the compute dtype."""
    if spec.soft and spec.axis != len(shape) - 1:
        target = xp.moveaxis(target, spec.axis, -1)
    w = None if weight is None else xp.astype(weight, dtype, copy=False)
    moved = shape[: spec.axis] + shape[spec.axis + 1:] + (shape[spec.axis],)
    tgt = _Target(xp, spec, target, w, moved, dtype)
    return tgt, tuple(_scalar(xp, v, dtype) for v in params)


def forward(
    xp: Any, spec: Spec, logits: Any, target: Any, weight: Any, params: tuple
) -> tuple[Any, tuple]:
    """The reduced loss, in the logits' dtype, and the residuals for :func:`backward`.

    ``params`` holds ``(ce_weight, ce_base, reg_weight, reg_base)``; ``weight`` is the
    class-weight vector or ``None``. Inputs are assumed validated. The residuals are a
    tuple of arrays (or ``None``), so that any autograd system can store them: the logits
    themselves and two numbers per position (the row maximum and log-normaliser), never
    anything of the logits' size; the backward rebuilds log p as it writes the gradient.

    With ``spec.chunk_size`` set and more positions than that, the positions are processed
    that many rows at a time, so that the temporaries of the regularizers and of soft
    targets stay chunk-sized too.
    """
    if _chunked(spec, math.prod(logits.shape) // logits.shape[spec.axis]):
        return _forward_chunked(xp, spec, logits, target, weight, params)
    loss, main, reg, stats, tgt = _positions(xp, spec, logits, target, weight, params)
    denominator = None
    if spec.reduction == "none":
        value = loss
    else:
        value = xp.sum(loss)
        if spec.reduction == "mean":
            denominator = _mean_denominator(xp, tgt, loss)
            value = _safe_divide(xp, value, denominator)
    return xp.astype(value, logits.dtype, copy=False), (logits, *stats, main, reg, denominator)


def _moved(xp: Any, spec: Spec, logits: Any, dtype: Any) -> Any:
    """The logits in the compute dtype with the class axis last."""
    z = xp.astype(logits, dtype, copy=False)
    return z if spec.axis == z.ndim - 1 else xp.moveaxis(z, spec.axis, -1)


def _positions(xp: Any, spec: Spec, logits: Any, target: Any, weight: Any, params: tuple) -> tuple:
    """Per position (class axis moved last): the loss, ignored positions 0 and unusable
    indices NaN; the main and regularizer terms; the row statistics; the target."""
    dtype = _compute_dtype(xp, logits.dtype)
    z = _moved(xp, spec, logits, dtype)
    tgt, (cw, cb, rw, rb) = _setup(xp, spec, tuple(logits.shape), target, weight, params, dtype)

    m, lt = _row_stats(xp, z)
    # log p in full only where a term reads every class; else only at the target
    log_p = log_p_y = None
    if tgt.wq is not None or spec.regularizer is not None:
        log_p = _primitive(xp, "log_p", _log_p)(xp, z, m, lt)
    if tgt.wq is None:
        log_p_y = tgt.log_p_at_target(z, m, lt)
    # +inf where the target has mass on a masked class
    main = _main_term(xp, spec, tgt, log_p if log_p_y is None else log_p_y)
    loss = main * (cw / _ln(xp, cb))
    reg = None
    if spec.regularizer is not None:
        # past the main term log p is only exponentiated or multiplied by p: masked
        # classes' -inf becomes a finite floor, so that p log p is 0 there (not 0 * -inf)
        log_p = _primitive(xp, "finite_log_p", _finite_log_p)(xp, log_p)
        reg = _reg_term(xp, spec, tgt, log_p, log_p_y)
        scaled = reg if tgt.scale is None else tgt.scale * reg
        loss = loss + scaled * (rw / _ln(xp, rb))
    if tgt.valid is not None:
        loss = xp.where(tgt.valid, loss, 0.0)
        main = xp.where(tgt.valid, main, 0.0)
        reg = None if reg is None else xp.where(tgt.valid, reg, 0.0)

    if tgt.invalid is not None:
        loss = xp.where(tgt.invalid, math.nan, loss)
    return loss, main, reg, (m, lt), tgt


# --- chunks of rows: the same math, bounded temporaries -------------------------------------


def _chunked(spec: Spec, positions: int) -> bool:
    return spec.chunk_size is not None and positions > spec.chunk_size


def _rows(xp: Any, spec: Spec, logits: Any, target: Any) -> tuple:
    """Logits as ``(N, C)``, the target as ``(N,)`` or ``(N, C)``, the positions' shape,
    the spec of one chunk and the chunks' row slices."""
    z = logits if spec.axis == logits.ndim - 1 else xp.moveaxis(logits, spec.axis, -1)
    positions, classes = tuple(z.shape[:-1]), z.shape[-1]
    rows = math.prod(positions)
    z = xp.reshape(z, (rows, classes))
    if spec.soft:
        t = target if spec.axis == target.ndim - 1 else xp.moveaxis(target, spec.axis, -1)
        target = xp.reshape(t, (rows, classes))
    else:
        target = xp.reshape(target, (rows,))
    row_spec = replace(spec, axis=1, reduction="none", chunk_size=None)
    starts = range(0, rows, spec.chunk_size)
    return z, target, positions, row_spec, [slice(a, min(a + spec.chunk_size, rows)) for a in starts]


def _forward_chunked(xp: Any, spec: Spec, logits: Any, target: Any, weight: Any,
                     params: tuple) -> tuple:
    z, target, positions, row_spec, chunks = _rows(xp, spec, logits, target)
    parts: dict = {"loss": [], "main": [], "reg": [], "m": [], "lt": []}
    denominator = 0.0
    for rows in chunks:
        loss, main, reg, (m, lt), tgt = _positions(xp, row_spec, z[rows, :], target[rows, ...],
                                                   weight, params)
        for name, part in zip(parts, (loss, main, reg, m, lt)):
            parts[name].append(part)
        if spec.reduction == "mean":
            denominator = denominator + _mean_denominator(xp, tgt, loss)
    loss, main, m, lt = (xp.concat(parts[name]) for name in ("loss", "main", "m", "lt"))
    reg = None if parts["reg"][0] is None else xp.concat(parts["reg"])
    if spec.reduction == "none":
        value, denominator = xp.reshape(loss, positions), None
    else:
        value = xp.sum(loss)
        if spec.reduction == "mean":
            value = _safe_divide(xp, value, denominator)
        else:
            denominator = None
    return xp.astype(value, logits.dtype, copy=False), (logits, m, lt, main, reg, denominator)


def _main_term(xp: Any, spec: Spec, tgt: _Target, log_p: Any) -> Any:
    """``log_p``: in full for dense targets, at the target for sparse ones."""
    return tgt.weighted_sum(_focal_values(xp, log_p, spec.gamma))


def _reverse_levels(spec: Spec) -> tuple:
    """``a = -log(q + eps)`` off and on the target class, for a one-hot target."""
    return -math.log(spec.eps), -math.log(1.0 + spec.eps)


def _reg_term(xp: Any, spec: Spec, tgt: _Target, log_p: Any, log_p_y: Any) -> Any:
    if spec.regularizer == "entropy":
        return 0.0 - _primitive(xp, "sum_p_log_p", _sum_p_log_p)(xp, log_p)
    if tgt.wq is None:  # one-hot q: R = a_on p_y + a_off sum_{c != y} p_c
        a_off, a_on = _reverse_levels(spec)
        off_target = _primitive(xp, "mass_off_target", _mass_off_target)(xp, log_p, tgt.index)
        return a_on * xp.exp(log_p_y) + a_off * off_target
    return xp.sum(xp.exp(log_p) * tgt.reverse_log(), axis=-1)


def _mean_denominator(xp: Any, tgt: _Target, loss: Any) -> Any:
    # torch's rule: the summed class weight of the counted positions for class indices,
    # the number of positions for soft targets.
    if tgt.scale is None and tgt.valid is None:
        return xp.asarray(math.prod(loss.shape), dtype=loss.dtype, device=_device(loss))
    ones = xp.ones_like(loss) if tgt.scale is None else tgt.scale
    if tgt.valid is not None:
        ones = xp.where(tgt.valid, ones, 0.0)
    return xp.sum(ones)


def _safe_divide(xp: Any, total: Any, denominator: Any) -> Any:
    # 0/0 (empty or all-ignored batch) is NaN on every backend, without a float warning.
    positive = denominator > 0
    safe = xp.where(positive, denominator, 1.0)
    return xp.where(positive, total / safe, math.nan)


def backward(
    xp: Any,
    spec: Spec,
    residuals: tuple,
    target: Any,
    weight: Any,
    params: tuple,
    cotangent: Any,
    logits_dtype: Any,
) -> tuple[Any, tuple]:
    """Gradients of ``sum(cotangent * loss)`` for the logits (in ``logits_dtype``) and for
    ``(ce_weight, ce_base, reg_weight, reg_base)`` (in the compute dtype; ``None`` where
    the parameter was a Python float)."""
    logits, m, lt, main, reg, denominator = residuals
    g = xp.asarray(cotangent, dtype=main.dtype, device=_device(main))
    if denominator is not None:
        g = _safe_divide(xp, g, denominator)
    g_pos = xp.reshape(g, main.shape) if spec.reduction == "none" else xp.broadcast_to(g, main.shape)
    if not _chunked(spec, math.prod(main.shape)):
        z = _moved(xp, spec, logits, main.dtype)
        dz, param_grads = _backward_positions(xp, spec, tuple(logits.shape), z, m, lt, main, reg,
                                              target, weight, params, g_pos)
        dz = xp.astype(dz, logits_dtype, copy=False)
        return (dz if spec.axis == dz.ndim - 1 else xp.moveaxis(dz, -1, spec.axis)), param_grads

    z, target, positions, row_spec, chunks = _rows(xp, spec, logits, target)
    from array_api_compat import is_writeable_array

    # written chunk by chunk where the namespace allows it (a concat would hold two copies)
    dz = xp.empty(z.shape, dtype=logits_dtype, device=_device(z)) if is_writeable_array(z) else []
    param_grads: list = [None] * 4
    for rows in chunks:
        z_rows = xp.astype(z[rows, :], main.dtype, copy=False)
        d_rows, d_params = _backward_positions(
            xp, row_spec, tuple(z_rows.shape), z_rows, m[rows, :], lt[rows, :], main[rows],
            None if reg is None else reg[rows], target[rows, ...], weight, params, g_pos[rows])
        d_rows = xp.astype(d_rows, logits_dtype, copy=False)
        if isinstance(dz, list):
            dz.append(d_rows)
        else:
            dz[rows, :] = d_rows
        param_grads = [d if total is None else total + d for total, d in zip(param_grads, d_params)]
    dz = xp.reshape(xp.concat(dz) if isinstance(dz, list) else dz, positions + (z.shape[-1],))
    return (dz if spec.axis == dz.ndim - 1 else xp.moveaxis(dz, -1, spec.axis)), tuple(param_grads)


def _backward_positions(xp: Any, spec: Spec, shape: tuple, z: Any, m: Any, lt: Any, main: Any,
                        reg: Any, target: Any, weight: Any, params: tuple, g_pos: Any) -> tuple:
    """The gradient (class axis last, compute dtype) and the four parameter gradients, for
    per-position cotangents ``g_pos``; ``shape`` is the logits' own layout (for _setup)."""
    tgt, (cw, cb, rw, rb) = _setup(xp, spec, shape, target, weight, params, z.dtype)
    if tgt.valid is not None:
        g_pos = xp.where(tgt.valid, g_pos, 0.0)
    if tgt.invalid is not None:  # unchecked out-of-range index: a NaN row, not a number
        g_pos = xp.where(tgt.invalid, math.nan, g_pos)
    # weight/ln(b): d/dweight = 1/ln b; d/db = -weight / (b ln(b)^2); only for parameters
    # given as arrays (the others get None)
    learnt = [not isinstance(v, (int, float)) for v in (cw, cb, rw, rb)]
    ln_cb = _ln(xp, cb)
    c_main = g_pos * (cw / ln_cb)  # per-position coefficient of d(main)/dz
    c_reg = None
    d_cw = d_cb = d_rw = d_rb = None
    if reg is not None:
        ln_rb = _ln(xp, rb)
        g_reg = g_pos if tgt.scale is None else g_pos * tgt.scale
        c_reg = g_reg * (rw / ln_rb)
        if learnt[2] or learnt[3]:
            r_sum = xp.sum(g_reg * reg)
            d_rw = r_sum / ln_rb
            d_rb = -r_sum * rw / (rb * ln_rb**2)
    if learnt[0] or learnt[1]:
        m_sum = xp.sum(g_pos * main)
        d_cw = m_sum / ln_cb
        d_cb = -m_sum * cw / (cb * ln_cb**2)

    # d(main)/dz = v - p sum(v), v = w q p f'(p); dH/dz = -p (log p + H); dR/dz = p (a - R)
    if tgt.wq is None:
        # one-hot q: v lives on the target only, so every term is p * alpha + onehot * beta
        log_p_y = None  # p_y f'(p_y) is -1 for cross entropy, whatever p_y
        if spec.gamma != 0 or spec.regularizer == "reverse":
            log_p_y = _finite_log_p(xp, tgt.log_p_at_target(z, m, lt))
        k = -c_main if spec.gamma == 0 else c_main * _focal_slopes(xp, log_p_y, spec.gamma)
        if tgt.scale is not None:
            k = k * tgt.scale
        alpha, beta = -k, k
        if spec.regularizer == "reverse":
            a_off, a_on = _reverse_levels(spec)
            alpha = alpha + c_reg * (a_off - reg)
            beta = beta + c_reg * (a_on - a_off) * xp.exp(log_p_y)
        log_p_scale = None
        if spec.regularizer == "entropy":  # -p (log p + H) folds into the factor of p
            alpha, log_p_scale = alpha - c_reg * reg, -c_reg
        affine = _primitive(xp, "softmax_affine", _softmax_affine)
        dz = affine(xp, z, m, lt, alpha[..., None], tgt.index, beta, log_p_scale)
    else:
        log_p = _finite_log_p(xp, _primitive(xp, "log_p", _log_p)(xp, z, m, lt))
        p = xp.exp(log_p)
        v = tgt.wq * _focal_slopes(xp, log_p, spec.gamma)
        dz = c_main[..., None] * (v - p * xp.sum(v, axis=-1, keepdims=True))
        if spec.regularizer == "entropy":
            dz = dz - c_reg[..., None] * (p * (log_p + reg[..., None]))
        elif spec.regularizer == "reverse":
            dz = dz + c_reg[..., None] * (p * (tgt.reverse_log() - reg[..., None]))

    if tgt.valid is not None:  # even NaN logits at an ignored position get no gradient
        dz = xp.where(tgt.valid[..., None], dz, 0.0)
    param_grads = tuple(grad if wanted else None
                        for wanted, grad in zip(learnt, (d_cw, d_cb, d_rw, d_rb)))
    return dz, param_grads
