"""NumPy kernels for the primitives of ``entroloss._math.primitives``.

The same results as the array-API definitions, written in place on fresh buffers: NumPy
pays for every temporary the size of the logits. (CuPy and array-api-strict run the
definitions themselves.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entroloss._math import Kernels, log_p_floor


def row_stats(xp: Any, z: Any) -> tuple:
    top = np.maximum(z.max(axis=-1, keepdims=True), np.finfo(z.dtype).min)
    total = sum_exp_shifted(xp, z, top)
    return top, np.log(np.maximum(total, 1.0, out=total), out=total)


def sum_exp_shifted(xp: Any, z: Any, top: Any) -> Any:
    e = np.subtract(z, top)  # one temporary of the logits' size, exponentiated in place
    return np.exp(e, out=e).sum(axis=-1, keepdims=True)


def take_along_last(xp: Any, z: Any, index: Any) -> Any:
    if not z.flags.c_contiguous:  # a moved class axis: its rows would be a copy
        return np.take_along_axis(z, index, axis=-1)
    rows, at = _target_entries(z, index)  # one fancy index; take_along_axis builds several
    return rows[at].reshape(index.shape)


def log_p(xp: Any, z: Any, top: Any, norm: Any) -> Any:
    out = np.subtract(z, top, order="C")  # C order: _target_entries views it as rows
    out -= norm
    return out


def finite_log_p(xp: Any, lp: Any) -> Any:
    # the definition's where(lp < floor, floor, lp), in place (maximum keeps NaN)
    return np.maximum(lp, log_p_floor(np, lp.dtype), out=lp)


def sum_p_log_p(xp: Any, finite_lp: Any) -> Any:
    p = np.exp(finite_lp)
    p *= finite_lp
    return p.sum(axis=-1)


def _target_entries(out: Any, index: Any) -> tuple:
    """``out`` as rows of classes (a view of a C-ordered buffer) and the (row, class)
    coordinates of each row's target."""
    rows = out.reshape(-1, out.shape[-1])
    assert out.size == 0 or np.shares_memory(rows, out)
    return rows, (np.arange(rows.shape[0]), index.reshape(-1))


def sum_p_by_level(xp: Any, finite_lp: Any, index: Any, off: float, on: float) -> Any:
    # in p's own buffer: off everywhere, on at the target (no array of the levels)
    p = np.exp(finite_lp, order="C")
    rows, at = _target_entries(p, index)
    on_target = rows[at] * on
    rows *= off
    rows[at] = on_target
    return p.sum(axis=-1)


def softmax_affine(xp: Any, z: Any, top: Any, norm: Any, p_coef: Any, index: Any,
                   onehot_coef: Any, log_p_coef: Any = None, overwrite: bool = False) -> Any:
    # p = exp(z - top) / exp(norm), built in the buffer that becomes the gradient
    out = np.subtract(z, top, order="C")  # C order: _target_entries views it as rows
    np.exp(out, out=out)
    if log_p_coef is None:
        out *= p_coef / np.exp(norm)
    else:
        factor = finite_log_p(xp, log_p(xp, z, top, norm))
        factor *= log_p_coef[..., None]
        factor += p_coef
        factor /= np.exp(norm)
        out *= factor
    rows, at = _target_entries(out, index)
    rows[at] += np.reshape(onehot_coef, -1)  # one target per row: no repeated coordinates
    return out


def soft_cap(xp: Any, z: Any, cap: float) -> Any:
    # the definition's ops in one buffer of our own: z is the caller's logits
    out = np.divide(z, cap, order="C")  # C order: _target_entries views it as rows
    np.tanh(out, out=out)
    out *= cap
    return _masked_stay_masked(out, z)


def soft_cap_with_slope(xp: Any, z: Any, cap: float) -> tuple:
    t = np.divide(z, cap, order="C")
    np.tanh(t, out=t)
    slope = np.multiply(t, t)
    np.subtract(1.0, slope, out=slope)  # 1 - t*t, rounded as the definition's
    t *= cap
    return _masked_stay_masked(t, z), slope


def _masked_stay_masked(capped: Any, z: Any) -> Any:
    """The definition's ``where(z == -inf, -inf, capped)``, written into ``capped``."""
    np.copyto(capped, -np.inf, where=z == -np.inf)  # ==: isneginf takes ~4x as long
    return capped


def times_slope(xp: Any, dz: Any, slope: Any) -> Any:
    dz *= slope  # dz is the gradient buffer positions.gradients just built
    return dz


def zero_rows(xp: Any, dz: Any, keep: Any) -> Any:
    dz[~keep, ...] = 0.0  # dz: the gradient positions.gradients just built
    return dz


KERNELS = Kernels(row_stats=row_stats, sum_exp_shifted=sum_exp_shifted,
                  take_along_last=take_along_last, log_p=log_p, finite_log_p=finite_log_p,
                  sum_p_log_p=sum_p_log_p, sum_p_by_level=sum_p_by_level,
                  softmax_affine=softmax_affine, soft_cap=soft_cap,
                  soft_cap_with_slope=soft_cap_with_slope, times_slope=times_slope,
                  zero_rows=zero_rows)
