"""The target, seen as class weights ``w`` times a distribution ``q`` per position.

``q = (1 - eps) onehot(y) + eps / C`` for a class index ``y`` and label smoothing ``eps``,
``(1 - eps) t + eps / C`` for a soft target ``t``. A class index without smoothing stays
sparse: what the losses need of it is gathered at the target, so nothing of the logits'
size is built for it. Soft targets and smoothed indices get the dense ``w * q``.
"""

from __future__ import annotations

import math
from typing import Any

from .arrays import device
from .primitives import in_dtype, index_dtype, log_p, one_hot
from .spec import Spec

__all__ = ["Target", "soft_row_tolerance", "bad_soft_rows"]


def soft_row_tolerance(xp: Any, dtype: Any) -> float:
    """How far a soft target's row may sum from 1: the one rule of the eager check
    (``_validate.soft_rows``), of ``backends.jax_checks`` and of the unchecked math below.
    Rounding in a float32 softmax over many classes is far below 1e-4 (and a float32
    softmax cast to float64 must pass), while real mistakes are far above it; a float16
    or bfloat16 target gets ``sqrt(eps)`` of its own dtype."""
    return max(math.sqrt(float(xp.finfo(dtype).eps)), 1e-4)


def bad_soft_rows(xp: Any, t: Any, tolerance: float, group: Any = None) -> Any:
    """Per position (classes last), True where the row is no distribution: an entry
    negative or NaN, or a sum off 1 by more than ``tolerance`` (NaN and inf included,
    hence the negated comparisons). Two reductions per row; where each process holds a
    slice of the classes (``group``, a :class:`ClassSlice`'s), both are over every slice."""
    non_negative, total = xp.min(t, axis=-1) >= 0, xp.sum(t, axis=-1)
    if group is not None:  # a count of the slices with a bad entry: a sum, as NaN is no max
        non_negative = group.sum(xp.astype(~non_negative, t.dtype)) == 0
        total = group.sum(total)
    return ~(non_negative & (xp.abs(total - 1.0) <= tolerance))


class Target:
    """The target of one evaluation, classes last.

    Attributes (``None`` where they do not apply):
      indices: the class index per position, the positions' shape (sparse and smoothed
        indices); 0 where the position is ignored or its index unusable. ``index`` is
        the same with a trailing axis of 1, made where it is read.
      valid: positions not equal to ``ignore_index``.
      invalid: positions whose target validation did not read (jit, ``validate=False``)
        and that break its rules, an out-of-range index or a soft row that is no
        distribution (:func:`bad_soft_rows`): their loss and gradient become NaN.
      usable: positions whose index may be used (neither ignored nor invalid).
      scale: ``s_i``, the class weight of the target class (class indices with weights).
      q, wq: the dense distribution and ``w * q`` (soft targets and smoothed indices);
        ``wq`` is 0 at unusable positions.
      sample_weight: the weight of each position (the positions' shape), or None.
      mine: where each process holds a slice of the classes (``spec.classes``), the
        positions whose target class is in this one's slice; ``index`` is then the class
        within the slice (0 elsewhere) and every sum over the classes is over all slices.
    """

    # arrays of the caller's library, or None (set in __init__)
    valid: Any
    invalid: Any
    usable: Any
    indices: Any
    scale: Any
    q: Any
    wq: Any
    mine: Any

    def __init__(self, xp: Any, spec: Spec, target: Any, weight: Any, shape: tuple, dtype: Any,
                 sample_weight: Any = None):
        self.xp, self.spec = xp, spec
        self.sample_weight = sample_weight
        self.group = None if spec.classes is None else spec.classes.group
        self.local_classes = shape[-1]  # the classes of these logits
        # every class, of all slices: the smoothing's C and the range of an index
        self.num_classes = shape[-1] if spec.classes is None else spec.classes.num_classes
        self.smooth = spec.label_smoothing / self.num_classes  # the uniform part of q
        self.keep = 1.0 - spec.label_smoothing  # the share of q the target itself keeps
        # the class weights w of these logits' classes (classes last), or None; a slice's
        # are taken from the weights of all classes, which the scale reads by class index
        self.weight = weight if weight is None or self.group is None else xp.take(
            weight, xp.arange(self.local_classes, device=device(weight)) + self.group.offset())
        self.valid = self.invalid = self.usable = self.indices = self.scale = self.q = None
        self._index = None
        self.mine = None
        if spec.soft:
            t = xp.astype(target, dtype)
            if not spec.target_checked:  # (checked rows cost nothing here)
                self.invalid = bad_soft_rows(xp, t, soft_row_tolerance(xp, target.dtype),
                                             self.group)
            self.q = self.keep * t + self.smooth
        else:
            self._read_indices(target, weight, shape, dtype)
        self.wq = None
        if self.q is not None:
            self.wq = self.q if self.weight is None else self.weight * self.q
            if self.usable is not None:
                self.wq = xp.where(self.usable[..., None], self.wq, 0.0)

    def _read_indices(self, target: Any, weight: Any, shape: tuple, dtype: Any) -> None:
        xp, spec = self.xp, self.spec
        if spec.ignore_index is not None:
            self.valid = target != spec.ignore_index
        # Out-of-range indices are refused by validation when the data can be read;
        # where it did not (jax.jit, validate=False) their positions become NaN.
        if not spec.target_checked:
            self.invalid = (target < 0) | (target >= self.num_classes)
            if self.valid is not None:
                self.invalid = self.invalid & self.valid
        usable = self.valid
        if self.invalid is not None:
            usable = ~self.invalid if usable is None else usable & ~self.invalid
        if usable is not None:
            # the stand-in index 0 of an unusable position must carry no mass: class 0's
            # term could be +inf there and meet a zero weight
            target = xp.where(usable, target, 0)
        self.usable = usable
        indices = in_dtype(xp, target, index_dtype(xp))
        if weight is not None:
            self.scale = xp.reshape(xp.take(weight, xp.reshape(indices, (-1,))), target.shape)
        if self.group is not None:  # the class within this slice, where the slice holds it
            indices = indices - self.group.offset()
            self.mine = (indices >= 0) & (indices < self.local_classes)
            indices = xp.where(self.mine, indices, 0)
        self.indices = indices
        if self.smooth > 0:
            cold = xp.full(shape, self.smooth, dtype=dtype, device=device(target))
            self.q = xp.where(self.one_hot(), self.keep + self.smooth, cold)

    @property
    def index(self) -> Any:
        """:attr:`indices` with a trailing axis of 1, as ``take_along_last`` and
        ``one_hot`` read them: made at its first read (not functools.cached_property,
        whose lock torch.compile cannot trace)."""
        if self._index is None and self.indices is not None:
            self._index = self.indices[..., None]
        return self._index

    @property
    def sparse(self) -> bool:
        """A one-hot ``q`` kept as its index."""
        return self.wq is None

    def one_hot(self) -> Any:
        hot = one_hot(self.xp, self.index, self.local_classes)
        return hot if self.mine is None else hot & self.mine[..., None]

    def classes_sum(self, x: Any) -> Any:
        """A sum over these logits' classes (one number per position) made the sum over
        every class: all-reduced where each process holds a slice of them."""
        return x if self.group is None else self.group.sum(x)

    def onehot_coef(self, coef: Any) -> Any:
        """The coefficient of ``onehot(y)`` in a gradient (one number per position), 0 where
        this slice does not hold the target class (its stand-in index is 0)."""
        return coef if self.mine is None else self.xp.where(self.mine, coef, 0.0)

    def sum_p_by_level(self, kernels: Any, finite_lp: Any, off: float, on: float) -> Any:
        """``sum_c a_c p_c`` per position (sparse targets), ``a_c`` the level ``on`` at the
        target and ``off`` at every other class: over every class of the slices, a slice
        that does not hold the target all at ``off``."""
        xp = self.xp
        levels = kernels.sum_p_by_level(xp, finite_lp, self.index, off, on)
        if self.mine is None:
            return levels
        every_off = off * xp.sum(xp.exp(finite_lp), axis=-1)
        return self.classes_sum(xp.where(self.mine, levels, every_off))

    def log_p_at_target(self, kernels: Any, z: Any, top: Any, norm: Any, lp: Any = None) -> Any:
        """``log p[..., y]`` per position (sparse targets), from the logits and their row
        statistics (nothing of the logits' size is built), or taken from ``lp``, log p
        itself, where the caller has it (the same numbers: one op for three). 0 where the
        position is ignored or its index unusable (its stand-in class carries no mass)."""
        xp = self.xp
        picked = kernels.take_along_last(xp, z if lp is None else lp, self.index)
        if self.mine is not None:  # the slice that holds the class gives its logit
            picked = self.classes_sum(xp.where(self.mine[..., None], picked, 0.0))
        if lp is None:
            picked = log_p(xp, picked, top, norm)
        picked = xp.squeeze(picked, axis=-1)
        return picked if self.usable is None else xp.where(self.usable, picked, 0.0)

    def nll_at_target(self, kernels: Any, lp: Any) -> Any:
        """``-log p[..., y]`` per position from log p in full (all classes in one
        process), 0 where the position is ignored or its index unusable."""
        nll = kernels.nll_at_target(self.xp, lp, self.indices)
        return nll if self.usable is None else self.xp.where(self.usable, nll, 0.0)

    def weighted_sum(self, values: Any) -> Any:
        """``sum_c w_c q_c values_c`` per position, where ``values`` is the full array
        (dense targets) or ``values[..., y]`` (sparse ones).

        Entries with ``w_c q_c = 0`` contribute exactly 0, even where the value is +inf
        (a masked class), so no ``0 * inf`` NaN appears. Negative ``w_c q_c`` is kept, as
        the backward keeps it (unchecked, its position is NaN anyway: ``invalid``, and a
        negative class weight is made NaN by ``_validate.value_rule``).
        """
        xp = self.xp
        if self.wq is None:
            if self.scale is None:
                return values
            return self.scale * xp.where(self.scale != 0, values, 0.0)
        safe = xp.where(self.wq != 0, values, 0.0)
        return self.classes_sum(xp.sum(self.wq * safe, axis=-1))

    def reverse_log(self) -> Any:
        """``a_c = -log(q_c + eps)`` (dense targets; MIX-ENT). Where ``q_c = 0`` it is
        ``-log(eps)`` taken in Python: an eps below the dtype's range would round to 0."""
        xp = self.xp
        zero = self.q <= 0  # (< 0 only in a row that is no distribution: NaN, no log warning)
        inside = xp.where(zero, 1.0, self.q + self.spec.eps)  # no log(0), even transiently
        return xp.where(zero, -math.log(self.spec.eps), -xp.log(inside))

    def mean_denominator(self, loss: Any) -> Any:
        """torch's rule for ``reduction="mean"``: the summed class weight of the counted
        positions for class indices, the number of positions for soft targets (a Python
        float where it needs no data); each position counts its ``sample_weight`` times
        (Keras' and torch's weighted mean: ``sum(sw s l) / sum(sw s)``)."""
        xp = self.xp
        if self.scale is None and self.valid is None and self.sample_weight is None:
            return float(math.prod(loss.shape))  # known without reading the data
        ones = xp.ones_like(loss) if self.scale is None else self.scale
        if self.sample_weight is not None:
            ones = ones * self.sample_weight
        if self.valid is not None:
            ones = xp.where(self.valid, ones, 0.0)
        return xp.sum(ones)
