"""A linear head and a loss, without the whole logits: ``z = hidden @ W.T + b`` is formed
a chunk of rows at a time, :mod:`.positions` evaluates the loss (and its ``dl/dz``) on
that chunk, ``dl/dz`` is multiplied into the gradients of the hidden states, the
classifier and the bias, and the chunk is dropped.

No loss is defined here: this only composes the matmuls with ``positions.loss_terms``
and ``positions.gradients``. Rows are ``hidden (N, H)``, ``classifier (C, H)`` (torch's
``nn.Linear`` layout), ``bias (C,)`` or None; the target is ``(N,)`` or ``(N, C)``; the
spec is that of logits ``(N, C)`` (``axis=1``, ``chunk_size`` = rows per chunk).

Precision: the logits, their row statistics and every gradient are accumulated in the
compute dtype (float32 for float16/bfloat16 inputs: the classifier is cast once, each
chunk of hidden rows as it is used); the gradients are returned in their inputs' dtypes.

A soft target's gradient (``Wants.target``) is ``positions.gradients``' ``dl/dt`` of each
chunk, written back by rows as the hidden states' is: of the target's own size ``(N, C)``,
no memory of the logits' size beyond the target's.

Gradients are linear in the per-row cotangent, so when the cotangent is one number
(reductions "mean" and "sum") the gradients of the reduced loss can be formed in the
forward while each chunk is in hand (``with_grads``) and scaled by the cotangent later:
three matmuls per chunk in all, as the naive forward plus backward. The mean's ``1/D`` is
in the per-row cotangent of that pass (``D`` is read from the target first, or given), so
that a half-precision gradient is rounded once, after its float32 accumulation, and a unit
cotangent leaves it exact.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, NamedTuple

from .arrays import device, scatters_rows
from .chunking import (LOGITS_BUDGET_BYTES, EqualChunks, buffers_at_peak, default_chunk_size,
                       equal_chunks, row_slices, rows_out, rows_result, summed, write_rows)
from .chunks import rows_of
from .passes import safe_divide
from .positions import Asked, gradients, loss_terms
from .primitives import Kernels, argmax_of_slices, compute_dtype
from .spec import Inputs, Residuals, Scalars, Spec
from .target import Target

__all__ = ["Head", "Batch", "batch", "Inputs", "Wants", "HeadGradients", "LOGITS_BUDGET_BYTES",
           "default_chunk_size", "buffers_at_peak", "kept_rows", "forward", "backward",
           "cotangent_factor", "scale"]

class Head(NamedTuple):
    """The linear head: ``classifier (C, H)`` and ``bias (C,)`` or None."""

    classifier: Any
    bias: Any = None


class Batch(NamedTuple):
    """One call's rows: ``hidden (N, H)``, the head, and the target (``(N,)`` or
    ``(N, C)``), class weights, scalars and sample weights (``(N,)`` or None)."""

    head: Head
    hidden: Any
    inputs: Inputs


def batch(hidden: Any, classifier: Any, bias: Any, target: Any, weight: Any,
          scalars: Scalars, sample_weight: Any = None) -> Batch:
    """A :class:`Batch` from the arrays a linear-head loss is called with."""
    return Batch(Head(classifier, bias), hidden, Inputs(target, weight, scalars, sample_weight))


class Wants(NamedTuple):
    """Which gradients to form (each one is a matmul or a sum per chunk)."""

    hidden: bool = True
    classifier: bool = True
    bias: bool = True
    target: bool = False  # a soft target's; of the target's own size (N, C)


class HeadGradients(NamedTuple):
    """Gradients of ``sum(cotangent * loss)``; None where not wanted (or no bias, or a
    target of class indices)."""

    hidden: Any
    classifier: Any
    bias: Any
    scalars: Scalars
    target: Any = None


def _logits(xp: Any, h_rows: Any, head: Head, dtype: Any) -> Any:
    z = xp.astype(h_rows, dtype, copy=False) @ xp.matrix_transpose(head.classifier)
    if head.bias is not None:
        z += head.bias  # in place where the namespace writes (no second chunk), else rebound
    return z


def _in_compute_dtype(xp: Any, head: Head, dtype: Any) -> Head:
    bias = None if head.bias is None else xp.astype(head.bias, dtype, copy=False)
    return Head(xp.astype(head.classifier, dtype, copy=False), bias)


def _zero_head_grads(xp: Any, head: Head, wants: Wants, dtype: Any) -> tuple:
    """The classifier's and the bias's gradients before the first chunk (None where not
    wanted)."""
    where = device(head.classifier)
    classes, features = head.classifier.shape
    d_w = xp.zeros((classes, features), dtype=dtype, device=where) if wants.classifier else None
    d_b = (xp.zeros((classes,), dtype=dtype, device=where)
           if wants.bias and head.bias is not None else None)
    return d_w, d_b


class _Accumulator:
    """The gradients being formed, one chunk of rows at a time; ``wide`` is the head in
    the compute dtype."""

    def __init__(self, xp: Any, kernels: Kernels, batch: Batch, wide: Head, wants: Wants) -> None:
        self.xp, self.kernels, self.wide = xp, kernels, wide
        self.dtype, target = batch.hidden.dtype, batch.inputs.target
        self.hidden = rows_out(xp, batch.hidden) if wants.hidden else None
        self.target = rows_out(xp, target) if wants.target else None
        self.target_dtype = target.dtype
        self.classifier, self.bias = _zero_head_grads(xp, batch.head, wants,
                                                      wide.classifier.dtype)
        self.scalars: list = []

    def take(self, row_spec: Spec, rows: slice, h_rows: Any, kept: Residuals, chunk: Inputs,
             g_rows: Any) -> None:
        """One chunk's ``dl/dz (n, C)``, multiplied into the gradients (in a function of
        its own, so that the chunk's dl/dz goes with it); its ``dl/dt`` (a soft target's,
        else None) is the target's gradient for these rows as it is."""
        xp, asked = self.xp, Asked(target=self.target is not None, overwrite=True)
        dz, d_scalars, d_target = gradients(xp, self.kernels, row_spec, kept, chunk, g_rows, asked)
        if self.hidden is not None:
            write_rows(self.hidden, rows,
                       xp.astype(dz @ self.wide.classifier, self.dtype, copy=False))
        if self.target is not None:
            write_rows(self.target, rows, xp.astype(d_target, self.target_dtype, copy=False))
        if self.classifier is not None:
            self.classifier = self.kernels.add_product(xp, self.classifier,
                                                       xp.matrix_transpose(dz), h_rows)
        if self.bias is not None:
            self.bias += xp.sum(dz, axis=0)
        self.scalars.append(d_scalars)

    def result(self, head: Head) -> HeadGradients:
        xp = self.xp
        d_hidden = None if self.hidden is None else rows_result(xp, self.hidden)
        d_target = None if self.target is None else rows_result(xp, self.target)
        d_w = None if self.classifier is None else xp.astype(self.classifier,
                                                             head.classifier.dtype, copy=False)
        d_b = None if self.bias is None else xp.astype(self.bias, head.bias.dtype, copy=False)
        return HeadGradients(d_hidden, d_w, d_b, Scalars(*summed(self.scalars)), d_target)


def _counted(xp: Any, spec: Spec, h_rows: Any, t_rows: Any) -> Any:
    """The rows with ignored ones zeroed: their loss and dl/dz are masked to 0 anyway, but
    0 * NaN in ``dz.T @ h`` would still carry a NaN hidden state into the classifier's
    gradient (the plain losses give NaN logits at an ignored position no gradient)."""
    if spec.ignore_index is None or spec.soft:
        return h_rows
    return xp.where((t_rows != spec.ignore_index)[:, None], h_rows, 0.0)


def _sweep(xp: Any, kernels: Kernels, spec: Spec, batch: Batch, g_rows: Any,
           wants: Wants) -> tuple:
    """Every chunk: its logits, its losses and (with ``g_rows``, the per-row cotangents)
    its gradients. Returns ``(loss per row, the mean's denominator, HeadGradients)``."""
    size = spec.chunk_size
    assert size is not None, "the linear head's spec carries its chunk size (set in _linear)"
    wants = wants._replace(target=wants.target and spec.soft)
    if kernels.scan is not None:
        return _scanned_sweep(xp, kernels, kernels.scan, spec, size, batch, g_rows, wants)
    hidden = batch.hidden
    dtype = compute_dtype(xp, hidden.dtype)
    wide = _in_compute_dtype(xp, batch.head, dtype)  # one cast of the classifier, not a chunk's
    row_spec = replace(spec, chunk_size=None)
    accumulator = None if g_rows is None else _Accumulator(xp, kernels, batch, wide, wants)
    losses, denominator = [], 0.0
    for rows in row_slices(hidden.shape[0], size):
        chunk = rows_of(batch.inputs, rows)
        h_rows = _counted(xp, spec, xp.astype(hidden[rows, :], dtype, copy=False), chunk.target)
        z = _logits(xp, h_rows, wide, dtype)
        per = loss_terms(xp, kernels, row_spec, z, chunk)
        losses.append(per.loss)
        if per.denominator is not None:
            denominator = denominator + per.denominator
        if accumulator is not None:
            accumulator.take(row_spec, rows, h_rows, per.residuals(z), chunk, g_rows[rows])
        del z, per  # the chunk's logits go before the next chunk's are made
    grads = None if accumulator is None else accumulator.result(batch.head)
    mean = spec.reduction == "mean"
    return xp.concat(losses), denominator if mean else None, grads


# --- equal chunks through a loop primitive (jax.lax.scan) -----------------------------------
#
# A compiler that sees a Python loop unrolled schedules its chunks side by side (XLA keeps
# every chunk's temporaries alive at once); one loop body over equal chunks is compiled
# once and run in turn. The rows are padded to whole chunks with rows that count nothing:
# zero hidden states, a target whose terms are finite (so that they times their zero
# cotangent are exactly 0), a zero cotangent; their losses are dropped after the loop and
# the mean's divisor is taken over the real rows before it.


def _padded_target(xp: Any, spec: Spec, target: Any, head: Head, plan: EqualChunks) -> Any:
    """A padded row's target: the class of the largest bias (0 without one), whose log p
    at a zero hidden state is finite even where other classes are masked with -inf; for
    a soft target its one-hot row, a distribution (a row of no mass would be marked NaN
    where the rows were not checked, and NaN times a zero cotangent is NaN). Where each
    process holds a slice of the classes, the largest bias of all slices, and a soft
    row is hot on the slice that holds it."""
    rows = plan.padded_rows
    if rows == target.shape[0]:
        return target
    padded = plan.pad(xp, target, 0)
    real = xp.arange(rows, device=device(target)) < target.shape[0]
    group = None if spec.classes is None else spec.classes.group
    top = 0 if head.bias is None else argmax_of_slices(xp, head.bias, group)
    if not spec.soft:
        return padded if head.bias is None else xp.where(real, padded,
                                                         xp.astype(top, target.dtype))
    first = 0 if group is None else group.offset()
    hot = xp.arange(target.shape[1], device=device(target)) + first == top
    return xp.where(real[:, None], padded, xp.astype(hot, target.dtype))


def _whole_denominator(xp: Any, spec: Spec, inputs: Inputs, num_classes: int,
                       dtype: Any) -> Any:
    """The mean's divisor over all rows at once, by ``Target.mean_denominator``: for class
    indices it reads the index, ``ignore_index``, the class weights and the sample weights
    only (one number per row), so the smoothing, whose dense ``q`` would be of the logits'
    size, is left out; for a soft target it is the number of rows (or their summed sample
    weight)."""
    if spec.reduction != "mean":
        return None
    target, weight, _, sample_weight = inputs
    rows = target.shape[0]
    if sample_weight is not None:
        sample_weight = xp.astype(sample_weight, dtype, copy=False)
    if spec.soft:
        return float(rows) if sample_weight is None else xp.sum(sample_weight)
    tgt = Target(xp, replace(spec, label_smoothing=0.0), target,
                 None if weight is None else xp.astype(weight, dtype, copy=False),
                 (rows, num_classes), dtype, sample_weight)
    return tgt.mean_denominator(xp.zeros((rows,), dtype=dtype, device=device(target)))


def _zero_grads(xp: Any, head: Head, scalars: Scalars, wants: Wants, dtype: Any) -> tuple:
    """The loop's carry: the classifier's and the bias's gradients and the scalars'."""
    where = device(head.classifier)
    d_s = Scalars(*(xp.zeros((), dtype=dtype, device=where) if learnt else None
                    for learnt in scalars.learnt()))
    return (*_zero_head_grads(xp, head, wants, dtype), d_s)


def _plus(total: Any, part: Any) -> Any:
    return None if total is None else total + part


def _chunk_body(xp: Any, kernels: Kernels, spec: Spec, wide: Head, inputs: Inputs,
                wants: Wants) -> Any:
    """One chunk as a loop body: ``(carry, (h, t, g)) -> (carry, (loss, d_hidden,
    d_target))``; ``wide`` is the head in the compute dtype."""
    row_spec, dtype = replace(spec, chunk_size=None), wide.classifier.dtype

    def body(carry: tuple, rows: tuple) -> tuple:
        h_rows, t_rows, sw_rows, g_chunk = rows
        h_rows = _counted(xp, spec, xp.astype(h_rows, dtype, copy=False), t_rows)
        z = _logits(xp, h_rows, wide, dtype)
        chunk = inputs._replace(target=t_rows, sample_weight=sw_rows)
        per = loss_terms(xp, kernels, row_spec, z, chunk)
        if g_chunk is None:
            return carry, (per.loss, None, None)
        dz, d_scalars, d_t = gradients(xp, kernels, row_spec, per.residuals(z), chunk, g_chunk,
                                       Asked(target=wants.target))
        d_w, d_b, d_s = carry
        d_rows = dz @ wide.classifier if wants.hidden else None
        if d_w is not None:
            d_w = d_w + xp.matrix_transpose(dz) @ h_rows
        d_b = _plus(d_b, xp.sum(dz, axis=0))
        d_s = Scalars(*(_plus(t, d) for t, d in zip(d_s, d_scalars, strict=True)))
        if d_t is not None:
            d_t = xp.astype(d_t, t_rows.dtype, copy=False)
        return (d_w, d_b, d_s), (per.loss, d_rows, d_t)

    return body


def _scanned_sweep(xp: Any, kernels: Kernels, scan: Callable, spec: Spec, size: int,
                   batch: Batch, g_rows: Any, wants: Wants) -> tuple:
    """:func:`_sweep` as one ``scan(body, carry, chunks) -> (carry, stacked)`` over equal
    chunks of at most ``size`` rows (``kernels.scan``, with ``jax.lax.scan``'s contract)."""
    head, hidden, (target, weight, scalars, sample_weight) = batch
    dtype = compute_dtype(xp, hidden.dtype)
    wide = _in_compute_dtype(xp, head, dtype)
    rows = hidden.shape[0]
    plan = equal_chunks(rows, size)
    padded = lambda x: None if x is None else plan.stack(xp, plan.pad(xp, x, 0))
    chunks = (padded(hidden), plan.stack(xp, _padded_target(xp, spec, target, head, plan)),
              padded(sample_weight), padded(g_rows))
    body = _chunk_body(xp, kernels, spec, wide, batch.inputs, wants)
    carry = None if g_rows is None else _zero_grads(xp, head, scalars, wants, dtype)
    carry, (losses, d_hidden, d_target) = scan(body, carry, chunks)
    loss = plan.unstack(xp, losses[..., None], rows)[:, 0]
    denominator = _whole_denominator(xp, spec, batch.inputs, head.classifier.shape[0], dtype)
    if carry is None:
        return loss, denominator, None
    d_w, d_b, d_s = carry
    if d_hidden is not None:
        d_hidden = xp.astype(plan.unstack(xp, d_hidden, rows), hidden.dtype, copy=False)
    if d_target is not None:  # in the target's dtype already, the padded rows dropped
        d_target = plan.unstack(xp, d_target, rows)
    cast = lambda g, x: None if g is None else xp.astype(g, x.dtype, copy=False)
    return loss, denominator, HeadGradients(d_hidden, cast(d_w, head.classifier),
                                            cast(d_b, head.bias), d_s, d_target)


# --- ignored rows: left out of the matmuls when the target can be read ---------------------


def kept_rows(xp: Any, spec: Spec, target: Any) -> Any:
    """The indices of the rows that count (class index != ``ignore_index``), or None when
    all do, for :func:`forward` and :func:`backward` to leave the others out of the
    matmuls. Reads the target, so only for concrete targets, and only for the libraries
    that write rows back by index (NumPy, CuPy, torch); elsewhere (``jax.jit``,
    array-api-strict) ignored rows are computed and masked to 0."""
    if spec.ignore_index is None or spec.soft or not scatters_rows(target):
        return None
    keep = xp.nonzero(target != spec.ignore_index)[0]
    return None if keep.shape[0] == target.shape[0] else keep


def _kept_batch(xp: Any, keep: Any, batch: Batch, *more: Any) -> tuple:
    """The batch of the kept rows, and of each of ``more`` (per-row arrays)."""
    if keep is None:
        return (batch, *more)
    take = lambda a: None if a is None else xp.take(a, keep, axis=0)
    inputs = batch.inputs
    hidden, target, sample_weight, *kept = map(take, (batch.hidden, inputs.target,
                                                      inputs.sample_weight, *more))
    inputs = inputs._replace(target=target, sample_weight=sample_weight)
    return (batch._replace(hidden=hidden, inputs=inputs), *kept)


def _spread(xp: Any, keep: Any, rows: int, values: Any) -> Any:
    """Rows of the kept positions back among all ``rows``, 0 at the ignored ones."""
    if keep is None or values is None:
        return values
    full = xp.zeros((rows,) + tuple(values.shape[1:]), dtype=values.dtype, device=device(values))
    full[keep, ...] = values
    return full


# --- the passes -------------------------------------------------------------------------


def _reduce(xp: Any, spec: Spec, loss: Any, denominator: Any) -> Any:
    if spec.reduction == "none":
        return loss
    total = xp.sum(loss)
    return safe_divide(xp, total, denominator) if spec.reduction == "mean" else total


def forward(xp: Any, kernels: Kernels, spec: Spec, batch: Batch, *, with_grads: bool = False,
            wants: Wants = Wants(), keep: Any = None, denominator: Any = None) -> tuple:
    """``(value, denominator, grads)``: the reduced loss in the hidden states' dtype (per
    row with "none"); the mean's divisor (``denominator`` where the call gives it, a
    constant; else the counted one; None outside "mean"); with ``with_grads`` the
    :class:`HeadGradients` of the reduced loss (else None), for :func:`scale` to
    multiply by the cotangent. With ``kernels.scan`` (``jax.lax.scan``'s contract) the
    chunks are one loop body over equal chunks rather than a Python loop. ``keep``: the
    rows that count (:func:`kept_rows`), or None for all."""
    hidden = batch.hidden
    rows = hidden.shape[0]
    (kept,) = _kept_batch(xp, keep, batch)
    g_rows = None
    if with_grads:
        dtype, where = compute_dtype(xp, hidden.dtype), device(kept.hidden)
        if spec.reduction == "mean" and denominator is None:
            denominator = _whole_denominator(xp, spec, kept.inputs,
                                             kept.head.classifier.shape[0], dtype)
        # each row's cotangent: 1/D under "mean" (0 where D is not > 0), else 1
        factor = cotangent_factor(xp, spec, 1.0, denominator)
        shape = (kept.hidden.shape[0],)
        g_rows = (xp.full(shape, factor, dtype=dtype, device=where) if isinstance(factor, float)
                  else xp.broadcast_to(xp.astype(factor, dtype), shape))
    loss, counted, grads = _sweep(xp, kernels, spec, kept, g_rows, wants)
    denominator = counted if denominator is None else denominator
    value = _reduce(xp, spec, _spread(xp, keep, rows, loss), denominator)
    if grads is not None:
        grads = grads._replace(hidden=_spread(xp, keep, rows, _over_slices(spec, grads.hidden)))
    return xp.astype(value, hidden.dtype, copy=False), denominator, grads


def cotangent_factor(xp: Any, spec: Spec, cotangent: Any, denominator: Any) -> Any:
    """What the gradients of the sum are multiplied by for a reduced loss's cotangent
    (the per-row cotangent of a pass with gradients).
    A mean over nothing (every position ignored) is NaN, and its gradients are 0, as the
    plain losses give them (NaN x the sum's zeros would be NaN)."""
    if spec.reduction != "mean":
        return cotangent
    if isinstance(denominator, float):  # known without the data (no weights, nothing ignored)
        return cotangent / denominator if denominator > 0 else cotangent * 0.0
    positive = denominator > 0
    return xp.where(positive, cotangent / xp.where(positive, denominator, 1.0), 0.0)


def scale(xp: Any, grads: HeadGradients, factor: Any) -> HeadGradients:
    """The gradients of :func:`forward` times ``factor`` (a 0-d array or a number), each in its
    own dtype (NumPy and JAX would promote a float16 gradient times a float32 factor)."""
    times = lambda g: None if g is None else xp.astype(g * factor, g.dtype, copy=False)
    return HeadGradients(times(grads.hidden), times(grads.classifier), times(grads.bias),
                         Scalars(*(times(d) for d in grads.scalars)), times(grads.target))


def backward(xp: Any, kernels: Kernels, spec: Spec, batch: Batch, cotangent: Any,
             denominator: Any, *, wants: Wants = Wants(), keep: Any = None) -> HeadGradients:
    """The gradients of ``sum(cotangent * loss)``, recomputing every chunk's logits: for
    a per-row cotangent (reduction "none"), or where the forward formed none."""
    hidden = batch.hidden
    rows = hidden.shape[0]
    dtype = compute_dtype(xp, hidden.dtype)
    if spec.reduction == "none":
        g_rows = xp.astype(xp.reshape(cotangent, (rows,)), dtype)
    else:
        g = cotangent_factor(xp, spec, xp.astype(xp.asarray(cotangent, device=device(hidden)),
                                                 dtype), denominator)
        g_rows = xp.broadcast_to(g, (rows,))
    kept, g_rows = _kept_batch(xp, keep, batch, g_rows)
    _, _, grads = _sweep(xp, kernels, spec, kept, g_rows, wants)
    return grads._replace(hidden=_spread(xp, keep, rows, _over_slices(spec, grads.hidden)))


def _over_slices(spec: Spec, d_hidden: Any) -> Any:
    """The hidden states' gradient where each process holds a slice of the classifier's
    rows: each slice's ``dl/dz @ W`` is a share of it, summed over the processes (one
    all-reduce of the hidden states' size, as a column-parallel layer's backward)."""
    if d_hidden is None or spec.classes is None:
        return d_hidden
    return spec.classes.group.sum(d_hidden)
