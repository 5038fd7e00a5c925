"""The explicit-gradient adapter: NumPy, CuPy and array-api-strict (no autograd).

``value_and_grad`` runs the shared forward, then the shared backward with a unit
cotangent. It serves every backend: it is how NumPy and CuPy users train and what the
torch and JAX autograd paths are checked against.
"""

from __future__ import annotations

from typing import Any

from entroloss import _math


def loss(xp: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any, params: tuple) -> Any:
    return _math.forward(xp, spec, logits, target, weight, params)[0]


def value_and_grad(
    xp: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any, params: tuple
) -> tuple:
    value, residuals = _math.forward(xp, spec, logits, target, weight, params)
    # d(sum of the output)/d(inputs): a cotangent of ones (a scalar broadcasts for "none")
    cotangent = xp.ones_like(value) if spec.reduction == "none" else 1.0
    d_logits, d_params = _math.backward(
        xp, spec, residuals, target, weight, params, cotangent, logits.dtype
    )
    return value, d_logits, d_params


# --- NumPy kernels for _math's primitives (see _math.NATIVE) --------------------------------
# The same results as the array-API definitions, written in place on fresh buffers: NumPy
# pays for every temporary the size of the logits. (CuPy and array-api-strict run the
# definitions themselves.)

import math  # noqa: E402

import numpy as np  # noqa: E402


def _sum_exp_shifted(xp: Any, z: Any, m: Any) -> Any:
    e = np.subtract(z, m)
    return np.exp(e, out=e).sum(axis=-1, keepdims=True)


def _log_p(xp: Any, z: Any, m: Any, lt: Any) -> Any:
    out = np.subtract(z, m, order="C")  # C order: _target_entries views it as rows
    out -= lt
    return out


def _finite_log_p(xp: Any, log_p: Any) -> Any:
    # _math's where(log_p < floor, floor, log_p), in place on the forward's own fresh log p
    # (maximum keeps NaN)
    return np.maximum(log_p, -math.sqrt(float(np.finfo(log_p.dtype).max)), out=log_p)


def _sum_p_log_p(xp: Any, log_p: Any) -> Any:
    p = np.exp(log_p)
    p *= log_p
    return p.sum(axis=-1)


def _target_entries(out: Any, index: Any) -> tuple:
    """``out`` as rows of classes (a view of a C-ordered buffer) and the (row, class)
    coordinates of each row's target."""
    rows = out.reshape(-1, out.shape[-1])
    assert out.size == 0 or np.shares_memory(rows, out)
    return rows, (np.arange(rows.shape[0]), index.reshape(-1))


def _mass_off_target(xp: Any, log_p: Any, index: Any) -> Any:
    p = np.exp(log_p, order="C")
    rows, at = _target_entries(p, index)
    rows[at] = 0.0
    return p.sum(axis=-1)


def _softmax_affine(xp: Any, z: Any, m: Any, lt: Any, alpha: Any, index: Any, beta: Any,
                    log_p_scale: Any = None) -> Any:
    # p = exp(z - m) / exp(lt), built in the buffer that becomes the gradient
    out = np.subtract(z, m, order="C")  # C order: _target_entries views it as rows
    np.exp(out, out=out)
    if log_p_scale is None:
        out *= alpha / np.exp(lt)
    else:
        factor = _finite_log_p(xp, _log_p(xp, z, m, lt))
        factor *= log_p_scale[..., None]
        factor += alpha
        factor /= np.exp(lt)
        out *= factor
    rows, at = _target_entries(out, index)
    rows[at] += np.reshape(beta, -1)  # one target per row: no repeated coordinates
    return out


_math.NATIVE["array_api_compat.numpy"] = {
    "sum_exp_shifted": _sum_exp_shifted, "log_p": _log_p, "finite_log_p": _finite_log_p,
    "sum_p_log_p": _sum_p_log_p, "mass_off_target": _mass_off_target,
    "softmax_affine": _softmax_affine,
}
