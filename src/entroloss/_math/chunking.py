"""How rows are split into chunks: the one chunk plan of the plain losses (``chunks.py``),
the linear head (``linear.py``, as a Python loop and as one loop body over equal chunks)
and the native kernels' row blocks (``backends/torch_kernels.py``).

A chunk is a run of consecutive rows (:func:`row_slices`), except in the equal-chunk form
a loop primitive such as ``jax.lax.scan`` takes (:class:`EqualChunks`): there the rows are
padded to whole chunks and dealt out strided.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .arrays import device, is_writeable
from .spec import Spec

__all__ = ["LOGITS_BUDGET_BYTES", "default_chunk_size", "buffers_at_peak", "rows_within",
           "row_slices", "rows_out", "write_rows", "rows_result", "summed", "EqualChunks",
           "equal_chunks"]

# What the buffers of a chunk's logits' size alive at once may take together, in the
# compute dtype, when the linear head's chunk_size is None (measured against the naive
# loss's time and memory in docs/linear.md).
LOGITS_BUDGET_BYTES = 64 * 2**20


def default_chunk_size(num_classes: int, itemsize: int, buffers: int = 2) -> int:
    """Rows whose ``buffers`` (:func:`buffers_at_peak`) logits-sized buffers fit in
    ``LOGITS_BUDGET_BYTES`` together (at least one)."""
    return rows_within(LOGITS_BUDGET_BYTES // buffers, num_classes * itemsize)


def buffers_at_peak(spec: Spec) -> int:
    """How many buffers of a chunk's logits' size the linear head holds at once: one where
    the loss reads the logits at the target alone (a class index, no smoothing, no
    regularizer, no cap: the row sums go a block of rows at a time and ``dl/dz`` is written
    into the logits' own buffer); else two (the logits, and log p, p or the capped
    logits)."""
    alone = (not spec.soft and spec.label_smoothing == 0 and spec.regularizer is None
             and spec.softcap is None)
    return 1 if alone else 2


def rows_within(budget: int, row_size: int) -> int:
    """How many rows of ``row_size`` (bytes, elements) fit in ``budget``: at least one."""
    return max(1, budget // max(1, row_size))


def row_slices(rows: int, size: int) -> list:
    """Chunks of ``size`` consecutive rows, the last one shorter; one empty chunk for no
    rows, so that shapes still come out."""
    return [slice(a, min(a + size, rows)) for a in range(0, max(rows, 1), size)]


def rows_out(xp: Any, like: Any, dtype: Any = None) -> Any:
    """Where a result of ``like``'s shape is written a chunk of rows at a time: one empty
    array (in ``dtype``, else ``like``'s) where the namespace writes in place, else a list
    of the chunks to concatenate (a concatenation would hold the result twice)."""
    if not is_writeable(like):
        return []
    return xp.empty(like.shape, dtype=like.dtype if dtype is None else dtype, device=device(like))


def write_rows(out: Any, rows: slice, values: Any) -> None:
    if isinstance(out, list):
        out.append(values)
    else:
        out[rows, ...] = values


def rows_result(xp: Any, out: Any) -> Any:
    return xp.concat(out) if isinstance(out, list) else out


def summed(parts: list) -> list:
    """The chunks' tuples (of gradients) added up slot by slot; a slot None in the first
    chunk stays None."""
    total = list(parts[0])
    for part in parts[1:]:
        total = [None if t is None else t + d for t, d in zip(total, part, strict=True)]
    return total


class EqualChunks(NamedTuple):
    """``number`` chunks of ``size`` rows each, over the rows padded to ``size * number``.

    Chunk ``j`` holds rows ``j, j + number, j + 2 number, ...``: strided, not contiguous, so
    that rows sharded in blocks over devices (data parallel) stay sharded within every
    chunk: each device works on its own rows in each step of the loop, and a gradient
    of the rows comes back sharded as the rows were."""

    size: int
    number: int  # not ``count``: that would shadow tuple.count

    @property
    def padded_rows(self) -> int:
        return self.size * self.number

    def pad(self, xp: Any, x: Any, fill: Any) -> Any:
        """``x`` with rows of ``fill`` appended up to :attr:`padded_rows`."""
        if self.padded_rows == x.shape[0]:
            return x
        tail = xp.full((self.padded_rows - x.shape[0],) + tuple(x.shape[1:]), fill,
                       dtype=x.dtype, device=device(x))
        return xp.concat([x, tail])

    def stack(self, xp: Any, x: Any) -> Any:
        """Padded rows ``(padded_rows, ...)`` as ``(number, size, ...)``."""
        strided = xp.reshape(x, (self.size, self.number) + tuple(x.shape[1:]))
        return xp.moveaxis(strided, 1, 0)

    def unstack(self, xp: Any, stacked: Any, rows: int) -> Any:
        """A loop's per-chunk rows ``(number, size, K)`` as ``(rows, K)``, the padding off."""
        in_order = xp.moveaxis(stacked, 0, 1)
        return xp.reshape(in_order, (self.padded_rows, stacked.shape[-1]))[:rows, :]


def equal_chunks(rows: int, size: int) -> EqualChunks:
    """Chunks of at most ``size`` rows, all equal; none longer than the rows (no padding
    for one chunk)."""
    step = min(size, max(rows, 1))
    return EqualChunks(step, -(-max(rows, 1) // step))
