"""Shared by test_fuzz.py and test_extremes.py: the float64 reference's loss and gradient,
the loss differentiated every way a backend offers, and the implementation's known error
(``known_error``).

Nothing here comes from the package's math: expected values come from
``entroloss.tools.reference`` (plain Python, one position at a time) and expected gradients
from central differences of it, so a wrong forward or a wrong hand-derived backward cannot
hide in both.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace

import entroloss as el
from entroloss._losses import focal_bound
from entroloss.tools import reference

from .cases import LOSSES  # noqa: F401  (re-exported for the fuzz and extremes tests)


def reference_loss(kind: str, logits: np.ndarray, target: np.ndarray, options: dict) -> np.ndarray:
    """The reference's loss for public ``options`` (Python floats, NumPy class weights)."""
    return np.asarray(reference.loss(kind, logits, target, **options))


def reference_grad(kind: str, logits: np.ndarray, target: np.ndarray, options: dict, *,
                   step: float = 1e-4) -> np.ndarray:
    """d sum(loss) / d logits of the reference, by central differences, in float64.

    Only finite logits are moved; a -inf (masked) logit gets 0 (a masked class has no
    gradient: docs/reliability.md, "Edge cases"). For finite losses only."""

    def total(v):
        return float(np.sum(reference_loss(kind, v, target, options)))

    return reference.central_differences(total, logits, step=step)


def to_numpy(backend, x) -> np.ndarray:
    return backend.to_numpy(x)


def differentiate(backend, fn, logits, target, **options) -> list:
    """``[(path, value, d sum(loss)/d logits)]`` as float64 NumPy arrays, through
    ``el.value_and_grad`` on every backend, plus torch autograd (``backward``) on torch and
    ``jax.grad`` on JAX. The value is that of the plain call ``fn(logits, target, ...)``."""
    value = to_numpy(backend, fn(logits, target, **options))
    explicit_value, grads = el.value_and_grad(fn, logits, target, **options)
    # the same value to the rounding of its terms: torch's plain call may take log p from
    # torch's log_softmax (backends/torch_native.py), whose row sum rounds in another
    # order than the math's own row statistics (bit for bit elsewhere)
    explicit = to_numpy(backend, explicit_value)
    if backend.library == "torch":
        eps = float(array_namespace(logits).finfo(logits.dtype).eps)
        scale = 1.0 + max(_finite_max(value), _finite_max(to_numpy(backend, logits)))
        np.testing.assert_allclose(explicit, value, rtol=0, atol=16 * eps * scale)
    else:
        np.testing.assert_array_equal(explicit, value)
    assert grads["logits"].dtype == logits.dtype
    out = [("value_and_grad", value, to_numpy(backend, grads["logits"]))]
    if backend.library == "torch":
        z = logits.detach().clone().requires_grad_(True)
        fn(z, target, **options).sum().backward()
        assert z.grad.dtype == logits.dtype
        out.append(("torch.autograd", value, to_numpy(backend, z.grad)))
    elif backend.library == "jax":
        import jax

        g = jax.grad(lambda z: fn(z, target, **options).sum())(logits)
        assert g.dtype == logits.dtype
        out.append(("jax.grad", value, to_numpy(backend, g)))
    return out


def rounded(backend, array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` as the backend holds it in ``dtype``, back in float64 (the reference is
    evaluated on exactly what the backend sees)."""
    return to_numpy(backend, backend.asarray(array, dtype))


def coefficient_scale(kind: str, logits: np.ndarray, target: np.ndarray, options: dict) -> np.ndarray:
    """Per position, a bound on what multiplies a rounding error of ``log p`` (or ``p``)
    in the loss and its gradient: ``|ce_weight / ln ce_base| * S * (2 + gamma)`` with
    ``S = sum_c w_c q_c``, plus the regularizer's ``|weight / ln base| * s`` times its
    term's ``bound`` in the registry (e.g. ``log C + 2`` for the entropy), times the
    cotangent (``1/D`` for "mean"). Ignored positions: 0."""
    o = options
    axis = o.get("axis", -1)
    z = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -1)
    num = z.shape[-1]
    w = np.ones(num) if o.get("weight") is None else np.asarray(o["weight"], dtype=np.float64)
    smoothing = o.get("label_smoothing", 0.0)
    soft = np.asarray(target).dtype.kind == "f"
    if soft:
        q = (1 - smoothing) * np.moveaxis(np.asarray(target, dtype=np.float64), axis, -1) + smoothing / num
        s = np.ones(z.shape[:-1])
        counted = np.ones(z.shape[:-1], dtype=bool)
    else:
        y = np.asarray(target)
        ignore = o.get("ignore_index")
        counted = np.ones(y.shape, dtype=bool) if ignore is None else y != ignore
        safe = np.where(counted & (y >= 0) & (y < num), y, 0)
        q = (1 - smoothing) * np.eye(num)[safe] + smoothing / num
        s = w[safe]
    big_s = np.sum(np.abs(w * q), axis=-1)
    r = reference.resolve_options(kind, **o)
    main = abs(r["ce_weight"] / math.log(r["ce_base"])) * big_s * focal_bound(num, r)
    reg = 0.0
    if r["regularizer"] is not None:  # each term's bound comes with the term (the registry)
        reg = (abs(r["reg_weight"] / math.log(r["reg_base"])) * np.abs(s)
               * r["regularizer"].bound(num, r))
    scale = np.where(counted, main + reg, 0.0)
    if o.get("reduction", "mean") == "mean":
        denominator = float(np.sum(np.where(counted, s if not soft else 1.0, 0.0)))
        scale = scale / denominator if denominator > 0 else scale * np.nan
    return scale


def compute_ulp(dtype: str) -> float:
    """The unit roundoff of the dtype the loss is computed in (halves: float32)."""
    return float(np.finfo(np.float64 if dtype == "float64" else np.float32).eps)


def known_error(kind: str, logits: np.ndarray, target: np.ndarray, options: dict, dtype: str,
                *, per_class: bool = False) -> np.ndarray:
    """The absolute rounding error allowed beyond the dtype's relative tolerance: a few ulps
    (of the compute dtype) of the parts that may cancel in a loss or its gradient
    (``coefficient_scale``), per position (``per_class``: broadcast along the class axis,
    for gradients), summed for "sum"/"mean".

    While known issues 1 and 3 of docs/reliability.md were open (log p as ``z -
    logsumexp(z)``; MIX-ENT's one-hot reverse term as ``a_off + (a_on - a_off) p_y``) this
    also allowed ulps of the largest ``|logit|``; with both fixed it does not, and the
    precision tests of test_extremes.py hold the tighter contract.
    """
    axis = options.get("axis", -1)
    z = np.asarray(logits, dtype=np.float64)
    per_position = 8 * compute_ulp(dtype) * np.nan_to_num(
        coefficient_scale(kind, z, target, options), nan=0.0)
    if per_class:
        return np.expand_dims(per_position, axis=axis % z.ndim)
    if options.get("reduction", "mean") == "none":
        return per_position
    return np.sum(per_position)


def _finite_max(x: np.ndarray) -> float:
    """The largest magnitude among the finite entries of ``x`` (0 if none)."""
    finite = np.abs(np.asarray(x, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else 0.0
