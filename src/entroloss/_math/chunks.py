"""Rows a chunk at a time: the same math, with temporaries the size of a chunk.

With ``Spec.chunk_size`` set and more positions than that, the logits are seen as rows
``(N, C)`` and :mod:`.positions` runs on ``chunk_size`` rows at a time. The forward keeps
only what it keeps anyway (numbers per position); the backward recomputes each chunk's
log p and writes its rows of the gradient into one buffer where the namespace allows
writes (a concatenation would hold the gradient twice), else concatenates.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from .chunking import row_slices, rows_out, rows_result, summed, write_rows
from .positions import Asked, PerPosition, class_axis_back, gradients, loss_terms
from .primitives import Kernels, in_dtype
from .spec import Gradients, Inputs, Residuals, Scalars, Spec

__all__ = ["applies", "loss_terms_chunked", "gradients_chunked", "rows_of"]


def applies(spec: Spec, positions: int) -> bool:
    return spec.chunk_size is not None and positions > spec.chunk_size


def _as_rows(xp: Any, spec: Spec, logits: Any, inputs: Inputs) -> tuple:
    """Logits as ``(N, C)``, the inputs with the target as ``(N,)`` or ``(N, C)`` and the
    sample weights as ``(N,)``, the spec of one chunk and the chunks' row slices."""
    target = inputs.target
    z = logits if spec.axis == logits.ndim - 1 else xp.moveaxis(logits, spec.axis, -1)
    rows, classes = math.prod(z.shape[:-1]), z.shape[-1]
    z = xp.reshape(z, (rows, classes))
    if spec.soft:
        t = target if spec.axis == target.ndim - 1 else xp.moveaxis(target, spec.axis, -1)
        target = xp.reshape(t, (rows, classes))
    else:
        target = xp.reshape(target, (rows,))
    sample_weight = inputs.sample_weight
    if sample_weight is not None:
        sample_weight = xp.reshape(sample_weight, (rows,))
    row_spec = replace(spec, axis=1, chunk_size=None)
    assert spec.chunk_size is not None, "called where applies(spec, ...)"
    inputs = inputs._replace(target=target, sample_weight=sample_weight)
    return z, inputs, row_spec, row_slices(rows, spec.chunk_size)


def rows_of(inputs: Inputs, rows: slice) -> Inputs:
    """The inputs of some rows: the target's and the sample weights' (the class weights and
    scalars are the same for every row)."""
    sample_weight = inputs.sample_weight
    return inputs._replace(target=inputs.target[rows, ...],
                           sample_weight=None if sample_weight is None else sample_weight[rows])


def loss_terms_chunked(xp: Any, kernels: Kernels, spec: Spec, logits: Any,
                       inputs: Inputs) -> PerPosition:
    """:func:`.positions.loss_terms` over all rows, one chunk at a time. The loss has the
    positions' shape; the other per-position arrays are flat, ``(N,)`` or ``(N, 1)``."""
    z, inputs, row_spec, chunks = _as_rows(xp, spec, logits, inputs)
    parts = [loss_terms(xp, kernels, row_spec, z[rows, :], rows_of(inputs, rows))
             for rows in chunks]
    loss, main, top, norm = (xp.concat([getattr(p, name) for p in parts])
                             for name in ("loss", "main", "row_max", "log_norm"))
    reg = None if parts[0].reg is None else xp.concat([p.reg for p in parts])
    denominator = None
    if spec.reduction == "mean":
        denominator = 0.0
        for part in parts:
            denominator = denominator + part.denominator
    positions = tuple(logits.shape[:spec.axis]) + tuple(logits.shape[spec.axis + 1:])
    return PerPosition(xp.reshape(loss, positions), main, reg, top, norm, denominator)


def gradients_chunked(xp: Any, kernels: Kernels, spec: Spec, residuals: Residuals,
                      inputs: Inputs, g_pos: Any, logits_dtype: Any, asked: Asked) -> Gradients:
    """The backward's :class:`Gradients`, one chunk of rows at a time; ``g_pos`` holds one
    cotangent per row. The scalars' gradients are summed over the chunks (or, with
    ``asked.per_position``, concatenated into the positions' shape)."""
    r = residuals
    z, inputs, row_spec, chunks = _as_rows(xp, spec, r.logits, inputs)
    dz = rows_out(xp, z, logits_dtype)
    parts_scalars, parts_target = [], []
    for rows in chunks:
        kept = Residuals(z[rows, :], r.row_max[rows, :], r.log_norm[rows, :], r.main[rows],
                         None if r.reg is None else r.reg[rows], None)
        d_rows, d_scalars, d_target = gradients(xp, kernels, row_spec, kept,
                                                rows_of(inputs, rows), g_pos[rows], asked)
        write_rows(dz, rows, in_dtype(xp, d_rows, logits_dtype))
        parts_scalars.append(d_scalars)
        parts_target.append(d_target)
    positions = tuple(r.logits.shape[:spec.axis]) + tuple(r.logits.shape[spec.axis + 1:])
    rows_back = lambda x: class_axis_back(xp, spec, xp.reshape(x, positions + (z.shape[-1],)))
    dz = rows_back(rows_result(xp, dz))
    d_target = None if parts_target[0] is None else rows_back(xp.concat(parts_target))
    return Gradients(dz, _combine_scalars(xp, parts_scalars, asked.per_position, positions),
                     d_target)


def _combine_scalars(xp: Any, parts: list, per_position: bool, positions: tuple) -> Scalars:
    if not per_position:
        return Scalars(*summed(parts))
    return Scalars(*(None if slot[0] is None else xp.reshape(xp.concat(list(slot)), positions)
                     for slot in zip(*parts, strict=True)))
