"""torch: its own fused kernels, where they compute the definition's numbers.

torch computes log p in one native op, ``log_softmax``, and cross entropy over class
indices as ``log_softmax`` and ``nll_loss`` (one fused op each way; ``F.cross_entropy``
is the two in one call); the shared math's
composition of the same numbers runs some fifteen ops, each a Python call and a
dispatch, which at small sizes is the whole cost (docs/performance.md). ``log_softmax``
computes ``log p = (z - max) - log sum exp(z - max)`` in the definition's order, and its
derivative is the definition's, on every row whose maximum is finite. On a row of only
-inf it gives NaN where the definition's log p is -inf (and, on such a row ignored by
``ignore_index``, a NaN gradient where the definition's is 0); on a row holding NaN or
+inf, NaN as the definition does. Such a row is NaN in every class, so one read (of
log p's least entry, or of the value) tells the call to run the math instead, and the
native numbers are only ever the definition's. On the CPU a read costs a reduction; on
an accelerator it would be a device-to-host sync: there the math runs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from entroloss import _math

__all__ = ["NATIVE", "applies", "is_cross_entropy", "log_p", "cross_entropy",
           "target_check", "BAD_INDEX", "bound_cross_entropy"]

NATIVE = True  # the tests switch it off for the math's own composition
_DTYPES = (torch.float32, torch.float64)  # their own compute dtype
_FLOOR = {dtype: _math.log_p_floor(torch, dtype) for dtype in _DTYPES}  # (read per call)


def applies(spec: _math.Spec, logits: Any) -> bool:
    """Whether log p of a call's logits may be torch's ``log_softmax`` (then :func:`log_p`
    says, per call, whether it is): by the key alone. The logits as the math reads them
    (float32 or float64, classes last, no cap), nothing else reading the row statistics
    (no z-loss, no class slices, no chunks), on the CPU, eager (no trace, no torch.func
    transform: the read), an exact ``torch.Tensor``. (CPU autocast leaves float32 and
    float64 ``log_softmax`` and ``nll_loss`` as they are.)"""
    return (NATIVE and type(logits) is torch.Tensor and logits.device.type == "cpu"
            and logits.dtype in _DTYPES and logits.ndim >= 1 and logits.numel() > 0
            and spec.axis == logits.ndim - 1 and spec.softcap is None and not spec.z_loss
            and spec.classes is None and spec.chunk_size is None
            and _eager() and not torch.compiler.is_compiling())


def is_cross_entropy(spec: _math.Spec, scalars: _math.Scalars, logits: Any, target: Any) -> bool:
    """Whether a call (given no class weights, sample weights or denominator) is the
    instance torch computes as ``F.cross_entropy`` (``nll_loss(log_softmax(z), y)``):
    plain cross entropy (no regularizer, no focal power, the Python weight 1 and base e,
    no smoothing) over int64 class indices that the call's check has read (``nll_loss``
    raises on an index out of range where the math makes its position NaN), where
    :func:`applies`."""
    return (spec.regularizer is None and spec.gamma == 0 and not spec.soft
            and spec.target_checked and spec.label_smoothing == 0
            and type(scalars.ce_weight) is float and scalars.ce_weight == 1.0
            and type(scalars.ce_base) is float and scalars.ce_base == math.e
            and type(target) is torch.Tensor and target.dtype == torch.int64
            and applies(spec, logits))


def _eager() -> bool:
    """No torch.func transform is active (a bound call's key cannot tell): the probe's
    read is possible."""
    return not torch._C._are_functorch_transforms_active()


def log_p(logits: Any, read: bool = True) -> tuple | None:
    """``(log_softmax(logits), whether the math's floor of log p matters)``, or None
    where a row of it is NaN or a transform is active (the math's then). One read, the
    least entry of log p: NaN with a NaN row; below the floor (``-sqrt(finfo.max)``) with a
    masked class, -inf or one masked with a finite number such as ``finfo.min``, where
    the floor keeps ``p log p`` and its derivative finite; else the floor is the identity.
    Without ``read`` (a caller whose own read of the value shows a NaN row, and which
    runs no floor) the floor is taken to matter."""
    if torch._C._are_functorch_transforms_active():  # (_eager, a call less)
        return None
    lp = torch.log_softmax(logits, -1)
    if not read:
        return lp, True
    least = lp.min().item()
    return None if math.isnan(least) else (lp, least < _FLOOR[lp.dtype])


def cross_entropy(spec: _math.Spec, logits: Any, target: Any) -> Any:
    """The loss of a call :func:`is_cross_entropy` holds for, or None where a row's log p
    is NaN or a transform is active (the caller runs the math)."""
    return _cross_entropy(spec, logits.ndim)(logits, target)


# nll_loss's own op: the value, and the number of positions it did not pass by as its
# ignore_index (the sum of their class weights; 0 with reduction "none")
_NLL_LOSS = torch.ops.aten.nll_loss_forward.default
_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _cross_entropy(spec: _math.Spec, ndim: int, counted: bool = False) -> Any:
    """:func:`cross_entropy` for the logits' number of axes, what it asks of the spec
    asked once (a bound call's function keeps it): ``log_softmax`` and ``nll_loss``, the
    ops of ``F.cross_entropy``. ``counted`` (a bound call whose target no check has read,
    :func:`_reads_every_index`): the call reads the count of positions ``nll_loss`` did
    not pass by, so that a position at ``nll_loss``'s own ignore_index, -100, is an
    ``IndexError``, as one outside ``[0, classes)`` is (:func:`bound_cross_entropy` maps
    it to our message; a bound call's positions, at most ``BLOCK_ELEMENTS``, are counted
    exactly in float32). It reads the value, NaN with a NaN row; with an ignore_index, an
    ignored row shows only in log p (its first class is read)."""
    flat, per_position = ndim != 2, spec.reduction == "none"
    reduction = _REDUCTIONS[spec.reduction]
    ignore = -100 if spec.ignore_index is None else spec.ignore_index

    def call(logits: Any, target: Any) -> Any:
        if torch._C._are_functorch_transforms_active():  # (the probe's read: not here)
            return None
        shape = target.shape
        if flat:
            logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        lp = torch.log_softmax(logits, -1)
        value, counted_weight = _NLL_LOSS(lp, target, None, reduction, ignore)
        if counted and counted_weight.item() != target.shape[0]:
            raise IndexError(f"Target {ignore} is out of bounds.")
        if spec.ignore_index is not None:
            probe = lp[:, 0].sum()
        else:
            probe = value.sum() if per_position else value
        if math.isnan(probe.item()):
            return None
        return value.reshape(shape) if flat and per_position else value
    return call


def _reads_every_index(spec: _math.Spec) -> bool:
    """Whether a bound :func:`cross_entropy` needs no read of its target (besides its
    ops' and the count's): every index but -100 is read by ``nll_loss``, and without an
    ignore_index a reduced call counts the -100s (see :func:`_cross_entropy`)."""
    return spec.ignore_index is None and spec.reduction != "none"


def target_check(spec: _math.Spec, logits: Any, check_target: Any) -> Any:
    """A bound call's check of its target before its ops (``check_target``,
    ``_prepare.remember_call``'s full check, or None where the call reads no data). On
    the CPU, for class indices without smoothing, every index is read by an op that
    raises on one outside ``[0, classes)`` (``gather``, ``nll_loss``: the caller runs
    ``check_target`` on such an error, whose message names the argument) but for
    ``nll_loss``'s ``ignore_index``, -100: no read where the call's ignore_index is -100
    too (the math and ``nll_loss`` pass those positions by) or where a ``scatter`` reads
    every index as well (MIX-ENT's levels, ``sum_p_by_level``), else one read of the
    least index, the full check where it is negative. Elsewhere (an accelerator, where an
    index out of range is a device-side assert) one fused read of the least and largest.
    At these sizes every read is a share of a training step (docs/performance.md)."""
    if check_target is None or spec.soft or math.prod(logits.shape) == 0:
        return check_target
    if logits.device.type == "cpu" and spec.label_smoothing == 0:
        if spec.ignore_index == -100 or spec.regularizer == "reverse":
            return None

        def check_least(target: Any) -> None:
            if target.min().item() < 0:
                check_target(target)  # raises, or passes an ignore_index
        return check_least
    classes = logits.shape[spec.axis]

    def check(target: Any) -> None:
        low, high = torch.aminmax(target)
        if low.item() < 0 or high.item() >= classes:
            check_target(target)
    return check


BAD_INDEX = (IndexError, RuntimeError)  # gather's and nll_loss's on an index out of range


def bound_cross_entropy(spec: _math.Spec, logits: Any, check_target: Any, fallback: Any) -> Any:
    """A bound call's function (``backends/torch.py``'s ``bind``) for a key
    :func:`is_cross_entropy` holds for: :func:`target_check`'s check, then
    :func:`cross_entropy`, or ``fallback`` where a row's log p is NaN."""
    counted = _reads_every_index(spec) and check_target is not None
    loss = _cross_entropy(spec, logits.ndim, counted)
    check = None if counted else target_check(spec, logits, check_target)

    def call(logits: Any, target: Any) -> Any:
        if check is not None:
            check(target)
        try:
            value = loss(logits, target)
            return fallback(logits, target) if value is None else value
        except BAD_INDEX:
            if check_target is not None:
                check_target(target)  # an index out of range: our message
            raise
    return call
