"""torch kernels for the primitives of ``entroloss._math.primitives``.

The same results with fewer full-size temporaries, each a pass over memory and, on CPU,
fresh pages to fault in. They run only inside the ``autograd.Function`` of
``backends/torch.py`` (and under ``no_grad`` in ``value_and_grad``), where torch's
autograd does not differentiate them, so writing in place is safe.

The two kernels that need ``exp(log p)`` next to ``log p`` (``sum_p_log_p``, and
``softmax_affine`` with a ``log p`` term: MIN-ENT's entropy) take a contiguous input a block
of rows at a time, so that the second temporary is of a block's size rather than the
input's: the chunk of logits and one buffer of its size, as for cross entropy. Every row
is computed by the same operations as whole.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from entroloss._math import Kernels, log_p_floor
from entroloss._math.chunking import row_slices, rows_within

from . import numpy_kernels

# The most elements (4 MiB of float32) a block of rows holds at once.
BLOCK_ELEMENTS = 2**20


def _row_blocks(x: torch.Tensor) -> list | None:
    """Slices of the rows of ``x`` seen as ``(rows, classes)``, at most ``BLOCK_ELEMENTS``
    each; None where there would be one block only, or ``x`` cannot be seen so without a
    copy (not contiguous: the class axis moved last)."""
    if x.ndim < 2 or x.numel() <= BLOCK_ELEMENTS or not x.is_contiguous():
        return None
    classes = max(x.shape[-1], 1)
    return row_slices(x.numel() // classes, rows_within(BLOCK_ELEMENTS, classes))


def _block_buffer(rows: torch.Tensor, blocks: list) -> torch.Tensor:
    """One block's temporary, written by every block in turn (out=): a fresh one a block
    would leave the allocator's freed blocks resident."""
    return rows.new_empty((blocks[0].stop - blocks[0].start, rows.shape[1]))


def _by_row(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-position array ``(..., 1)`` or ``(...)`` as rows ``(rows, 1)`` of ``like``."""
    column = x if x.ndim == like.ndim else x.unsqueeze(-1)
    return column.expand(like.shape[:-1] + (1,)).reshape(-1, 1)


def row_stats(xp: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top = z.amax(dim=-1, keepdim=True).clamp_min_(torch.finfo(z.dtype).min)
    return top, sum_exp_shifted(xp, z, top).clamp_min_(1.0).log_()


def sum_exp_shifted(xp: Any, z: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    blocks = _row_blocks(z)
    if blocks is None:
        return torch.sub(z, top).exp_().sum(dim=-1, keepdim=True)
    rows, top = z.view(-1, z.shape[-1]), _by_row(top, z)
    out = rows.new_empty((rows.shape[0], 1))
    buffer = _block_buffer(rows, blocks)
    for b in blocks:
        part = rows[b]
        room = buffer[: part.shape[0]]
        torch.sum(torch.sub(part, top[b], out=room).exp_(), dim=-1, keepdim=True, out=out[b])
    return out.view(z.shape[:-1] + (1,))


def take_along_last(xp: Any, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(z, -1, index)  # validated or made usable: no index to wrap around


def nll_at_target(xp: Any, lp: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    # nll_loss reads (N, C) log p and (N,) indices: other positions' shapes as views
    if lp.ndim <= 2:
        return torch.nn.functional.nll_loss(lp, indices, reduction="none")
    flat = torch.nn.functional.nll_loss(lp.reshape(-1, lp.shape[-1]), indices.reshape(-1),
                                        reduction="none")
    return flat.reshape(indices.shape)


def log_p(xp: Any, z: torch.Tensor, top: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return torch.sub(z, top).sub_(norm)


def finite_log_p(xp: Any, lp: torch.Tensor) -> torch.Tensor:
    # the definition's where(lp < floor, floor, lp), in place (clamp keeps NaN)
    return lp.clamp_(min=log_p_floor(torch, lp.dtype))


def sum_p_by_level(xp: Any, finite_lp: torch.Tensor, index: torch.Tensor, off: float,
                   on: float) -> torch.Tensor:
    # in p's own buffer: off everywhere, on at the target (no tensor of the levels)
    p = torch.exp(finite_lp)
    on_target = p.gather(-1, index).mul_(on)
    return p.mul_(off).scatter_(-1, index, on_target).sum(dim=-1)


def sum_p_log_p(xp: Any, finite_lp: torch.Tensor) -> torch.Tensor:
    blocks = _row_blocks(finite_lp)
    if blocks is None:
        return torch.exp(finite_lp).mul_(finite_lp).sum(dim=-1)
    rows = finite_lp.view(-1, finite_lp.shape[-1])
    out = rows.new_empty(rows.shape[0])
    buffer = _block_buffer(rows, blocks)
    for block in blocks:
        part = rows[block]
        room = buffer[: part.shape[0]]
        torch.sum(torch.exp(part, out=room).mul_(part), dim=-1, out=out[block])
    return out.view(finite_lp.shape[:-1])


def softmax_affine(xp: Any, z: torch.Tensor, top: torch.Tensor, norm: torch.Tensor,
                   p_coef: torch.Tensor, index: torch.Tensor, onehot_coef: torch.Tensor,
                   log_p_coef: torch.Tensor | None = None, overwrite: bool = False) -> torch.Tensor:
    # p = exp(z - top) / exp(norm), built in the buffer that becomes the gradient: z's own
    # where the caller gives it (overwrite), else a new one
    if log_p_coef is None:
        out = torch.sub(z, top, out=z) if overwrite else torch.sub(z, top)
        out.exp_().mul_(p_coef / torch.exp(norm))
    else:
        out = _times_log_p_factor(xp, z, top, norm, p_coef, log_p_coef, overwrite)
    if onehot_coef.dtype != out.dtype:
        onehot_coef = onehot_coef.to(out.dtype)
    return out.scatter_add_(-1, index, onehot_coef.unsqueeze(-1))


def _times_log_p_factor(xp: Any, z: torch.Tensor, top: torch.Tensor, norm: torch.Tensor,
                        p_coef: torch.Tensor, log_p_coef: torch.Tensor,
                        overwrite: bool) -> torch.Tensor:
    """``exp(z - top) * (p_coef + log_p_coef * log p) / exp(norm)``, a block of rows at a
    time for a large ``z``; each block's factor is read off ``z`` before its rows of the
    result (``z`` itself with ``overwrite``) are written."""
    blocks = _row_blocks(z)
    if blocks is None:
        factor = finite_log_p(xp, log_p(xp, z, top, norm)).mul_(log_p_coef.unsqueeze(-1)).add_(p_coef)
        out = torch.sub(z, top, out=z) if overwrite else torch.sub(z, top)
        return out.exp_().mul_(factor.div_(torch.exp(norm)))
    out = z if overwrite else torch.empty_like(z)  # contiguous, as z is
    rows, out_rows = z.view(-1, z.shape[-1]), out.view(-1, z.shape[-1])
    top, norm = _by_row(top, z), _by_row(norm, z)
    p_coef, log_p_coef = _by_row(p_coef, z), _by_row(log_p_coef, z)
    buffer = _block_buffer(rows, blocks)
    for b in blocks:
        part = rows[b]
        factor = torch.sub(part, top[b], out=buffer[: part.shape[0]]).sub_(norm[b])  # log p
        finite_log_p(xp, factor).mul_(log_p_coef[b]).add_(p_coef[b])
        torch.sub(part, top[b], out=out_rows[b]).exp_().mul_(factor.div_(torch.exp(norm[b])))
    return out


def soft_cap(xp: Any, z: torch.Tensor, cap: float) -> torch.Tensor:
    if _through_numpy(z):
        return torch.from_numpy(numpy_kernels.soft_cap(np, z.detach().numpy(), cap))
    # the definition's ops in one buffer of our own: z is the caller's logits
    return _masked_stay_masked(torch.div(z, cap).tanh_().mul_(cap), z)


def soft_cap_with_slope(xp: Any, z: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    if _through_numpy(z):
        capped, slope = numpy_kernels.soft_cap_with_slope(np, z.detach().numpy(), cap)
        return torch.from_numpy(capped), torch.from_numpy(slope)
    t = torch.div(z, cap).tanh_()
    slope = torch.mul(t, t).neg_().add_(1.0)  # 1 - t*t, rounded as the definition's
    return _masked_stay_masked(t.mul_(cap), z), slope


def _through_numpy(z: torch.Tensor) -> bool:
    """Whether to cap a CPU tensor with NumPy's ufuncs, on its memory: per thread NumPy's
    float32 tanh (SIMD) is ~14x torch's, and a fresh logits-sized buffer of NumPy's
    (huge pages) faults in ~4 ms where torch's takes ~27 ms (1024 x 8192 float32). Not
    under torch.compile, which traces only torch's ops. (A bound call's recording refuses
    the NumPy detour: a capped call on the Function path is not bound on CPU.)"""
    return z.device.type == "cpu" and z.dtype in _NUMPY_DTYPES and not _compiling()


_NUMPY_DTYPES = (torch.float32, torch.float64)  # the compute dtypes
_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


def _masked_stay_masked(capped: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The definition's ``where(z == -inf, -inf, capped)``, written into ``capped``."""
    return capped.masked_fill_(torch.isneginf(z), -math.inf)


def times_slope(xp: Any, dz: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return dz.mul_(slope)  # dz is the gradient buffer positions.gradients just built


def zero_rows(xp: Any, dz: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return dz.masked_fill_(~keep.unsqueeze(-1), 0.0)  # dz: the gradient just built


def add_product(xp: Any, total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return total.addmm_(a, b)  # no (C, H) temporary for the classifier's gradient


KERNELS = Kernels(row_stats=row_stats, sum_exp_shifted=sum_exp_shifted,
                  take_along_last=take_along_last, nll_at_target=nll_at_target,
                  log_p=log_p, finite_log_p=finite_log_p,
                  sum_p_log_p=sum_p_log_p, sum_p_by_level=sum_p_by_level,
                  softmax_affine=softmax_affine, soft_cap=soft_cap,
                  soft_cap_with_slope=soft_cap_with_slope, times_slope=times_slope,
                  zero_rows=zero_rows, add_product=add_product)


# --- the autograd table: the same primitives as torch ops that autograd differentiates ---
#
# Where torch's own autograd differentiates ``_math.forward`` (small shapes, see
# ``backends/torch.py``), no kernel may write into a tensor autograd has recorded: these
# allocate each result (the in-place ops above would corrupt the graph's saved tensors).
# The row maximum is detached: ``log p = (z - m) - log sum exp(z - m)`` does not depend on
# ``m`` (its derivative in ``m`` is ``-1 + sum p = 0``), so its gradient is exactly 0, as
# in torch's own log_softmax; an ``amax`` node would only add a backward op.


def _row_stats_autograd(xp: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top = z.detach().amax(dim=-1, keepdim=True).clamp_min_(torch.finfo(z.dtype).min)
    total = torch.sub(z, top).exp().sum(dim=-1, keepdim=True)
    # the definition's log(max(total, 1)): total is >= 1 but in a row of only -inf, where
    # it is 0 (the row maximum's own term is exp(0) = 1), so adding (total == 0) is the
    # same number; its derivative is 1 there, times exp(-inf) = 0 below, as the clamp's 0,
    # and autograd runs no mask for it (three backward ops fewer)
    return top, torch.add(total, total == 0).log()


def _finite_log_p_autograd(xp: Any, lp: torch.Tensor) -> torch.Tensor:
    # the definition's where(lp < floor, floor, lp): clamp's gradient is 0 below the floor
    # (a masked class) as the where's is, and NaN stays NaN
    return lp.clamp(min=log_p_floor(torch, lp.dtype))


def _sum_p_log_p_autograd(xp: Any, finite_lp: torch.Tensor) -> torch.Tensor:
    return torch.exp(finite_lp).mul(finite_lp).sum(dim=-1)


def _sum_p_by_level_autograd(xp: Any, finite_lp: torch.Tensor, index: torch.Tensor, off: float,
                             on: float) -> torch.Tensor:
    # the levels a constant tensor: autograd records three ops (exp, mul, sum) where p_y's
    # and the off-target mass's own would be eight (docs/performance.md)
    levels = torch.full_like(finite_lp, off).scatter_(-1, index, on)
    return torch.exp(finite_lp).mul(levels).sum(dim=-1)


AUTOGRAD_KERNELS = Kernels(row_stats=_row_stats_autograd, take_along_last=take_along_last,
                           nll_at_target=nll_at_target,
                           finite_log_p=_finite_log_p_autograd,
                           sum_p_log_p=_sum_p_log_p_autograd,
                           sum_p_by_level=_sum_p_by_level_autograd)

# Where no entry of log p is below the floor (no class masked, with -inf or with a finite
# number such as finfo.min: ``torch_native.log_p`` reads the least), the math's floor of
# log p is the identity: the same numbers and derivatives without a clamp, whose backward
# is two logits-sized ops (a compare and a where) in a graph of a dozen.
UNMASKED_AUTOGRAD_KERNELS = dataclasses.replace(AUTOGRAD_KERNELS, finite_log_p=lambda xp, lp: lp)
