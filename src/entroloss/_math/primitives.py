"""The softmax primitives, and the typed table through which a library supplies its own.

Every primitive has one definition here, against the array API. Like ``scipy.special``,
a library may supply a native kernel that computes the same thing with fewer temporaries
(``backends/torch_kernels.py``, ``backends/numpy_kernels.py``): a :class:`Kernels` table
with one field per primitive, whose fields default to these definitions. The loss
definitions never change with the backend; ``tests/test_kernels.py`` holds every table
to these definitions on the hard rows (masked, all -inf, +inf, NaN, finfo.min).

Shapes: classes are the last axis; ``row_max`` and ``log_norm`` keep it with size 1, so
that ``log p = (z - row_max) - log_norm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .arrays import device

__all__ = ["Kernels", "GENERIC", "row_max", "log_norm", "log_softmax", "softmax", "entropy",
           "finite_log_p", "log_p_floor", "nll_at_target", "soft_cap", "soft_cap_with_slope",
           "compute_dtype", "ln"]


_HALVES: dict = {}  # namespace name -> its half-precision dtypes
_INDEX_DTYPE: dict = {}  # namespace name -> its default indexing dtype


def learn_dtypes(xp: Any) -> None:
    """Fill the two tables above for ``xp`` now. The backends call this when they load a
    namespace's kernels, outside any trace: a first write into them inside torch.compile
    is a side effect in the autograd.Function's traced forward, which dynamo refuses
    (fullgraph) when nothing had run eagerly before."""
    compute_dtype(xp, xp.float32)
    index_dtype(xp)


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """float32 for the half precisions (their exp, log and sums lose too much), else
    ``dtype`` itself. (No ``dtype == None`` test: NumPy reads dtype(None) as float64.)"""
    halves = _HALVES.get(xp.__name__)
    if halves is None:
        halves = [getattr(xp, name) for name in ("float16", "bfloat16") if hasattr(xp, name)]
        _HALVES[xp.__name__] = halves
    return xp.float32 if any(dtype == half for half in halves) else dtype


def index_dtype(xp: Any) -> Any:
    dtype = _INDEX_DTYPE.get(xp.__name__)
    if dtype is None:
        dtype = _INDEX_DTYPE[xp.__name__] = xp.__array_namespace_info__().default_dtypes()["indexing"]
    return dtype


def in_dtype(xp: Any, x: Any, dtype: Any) -> Any:
    """``x`` in ``dtype``, without a call where it already is (the common case)."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def ln(xp: Any, base: Any) -> Any:
    """The natural log of a base given as a Python number or a 0-d array."""
    return math.log(base) if isinstance(base, (int, float)) else xp.log(base)


def row_max(xp: Any, z: Any) -> Any:
    """The maximum of each row, raised to the dtype's lowest finite number: a row of only
    -inf then has a finite maximum, so that ``z - row_max`` is -inf there (not NaN) and
    its log p is -inf. NaN stays NaN (one elementwise op where an ``==``/``where`` pair
    would take three)."""
    return xp.maximum(xp.max(z, axis=-1, keepdims=True), float(xp.finfo(z.dtype).min))


def log_norm(xp: Any, sum_exp: Any) -> Any:
    """``log(sum(exp(z - row_max)))`` from that sum; 0 for a row with no probability. The
    sum is >= 1 wherever a class has probability (the maximum's own term is 1) and 0
    where none has, so raising it to 1 changes only the latter."""
    return xp.log(xp.maximum(sum_exp, 1.0))


def sum_exp_shifted(xp: Any, z: Any, top: Any) -> Any:
    """``sum(exp(z - row_max))`` per row."""
    return xp.sum(xp.exp(z - top), axis=-1, keepdims=True)


def row_stats(xp: Any, z: Any) -> tuple[Any, Any]:
    """``(row_max, log_norm)`` per row, so that ``log p = (z - row_max) - log_norm``."""
    top = row_max(xp, z)
    return top, log_norm(xp, sum_exp_shifted(xp, z, top))


def row_stats_of_slices(xp: Any, kernels: Kernels, z: Any, group: Any) -> tuple[Any, Any]:
    """:func:`row_stats` where each process holds a slice of the classes: the maximum over
    every slice first, then the sum of the slices' ``exp(z - row_max)``. Two all-reduces of
    one number per row."""
    top = group.max(row_max(xp, z))
    return top, log_norm(xp, group.sum(kernels.sum_exp_shifted(xp, z, top)))


def argmax_of_slices(xp: Any, x: Any, group: Any = None) -> Any:
    """The index of the largest entry of the vector ``x``; where each process holds a
    slice of it (``group``, a ``ClassSlice``'s), the index among all slices of one that
    is largest (two all-reduces of one number)."""
    top = xp.argmax(x)
    if group is None:
        return top
    largest = xp.max(x)
    held = largest == group.max(largest)
    return group.max(xp.where(held, top + group.offset(), -1))


def soft_cap(xp: Any, z: Any, cap: float) -> Any:
    """``cap * tanh(z / cap)`` (Gemma 2's logit soft-capping): the logits squashed
    smoothly into ``(-cap, cap)``, nearly the identity for ``|z| << cap``. A -inf logit
    stays -inf, so that a class masked before the loss stays masked (its limit, -cap,
    would give it probability again). NaN stays NaN."""
    return _capped(xp, z, cap, xp.tanh(z / cap))


def soft_cap_with_slope(xp: Any, z: Any, cap: float) -> tuple[Any, Any]:
    """:func:`soft_cap` and its derivative ``1 - tanh(z / cap)^2`` (0 at +-inf), from one
    tanh: the backward redoes the cap on the raw logits it keeps."""
    t = xp.tanh(z / cap)
    return _capped(xp, z, cap, t), 1.0 - t * t


def _capped(xp: Any, z: Any, cap: float, t: Any) -> Any:
    return xp.where(z == -math.inf, -math.inf, cap * t)


def zero_rows(xp: Any, dz: Any, keep: Any) -> Any:
    """``dz`` (classes last) with the rows where ``keep`` (one boolean per row) is False
    set to 0, NaN included: an ignored position's gradient."""
    return xp.where(keep[..., None], dz, 0.0)


def times_slope(xp: Any, dz: Any, slope: Any) -> Any:
    """``dz * slope``: the chain rule through the cap, ``dl/dz_raw = dl/dz_capped * slope``."""
    return dz * slope


def log_p(xp: Any, z: Any, top: Any, norm: Any) -> Any:
    """``(z - row_max) - log_norm``: the maximum subtracted first keeps log p exact for
    logits with a large common offset (``z - logsumexp(z)`` would lose it to rounding)."""
    return (z - top) - norm


def log_p_floor(xp: Any, dtype: Any) -> float:
    """:func:`finite_log_p`'s floor in ``dtype``: ``-sqrt(max)``, so that a coefficient up
    to ``sqrt(max)`` times it stays finite."""
    return -math.sqrt(float(xp.finfo(dtype).max))


def finite_log_p(xp: Any, lp: Any) -> Any:
    """log p with everything below a floor raised to it, so that ``p * log p`` is 0 at a
    masked class instead of ``0 * -inf = NaN``, and a coefficient times it cannot
    overflow (a class masked with finfo.min too); NaN stays NaN (``NaN < floor`` is
    False). The floor, ``-sqrt(max)``, is far below any log p whose p is not 0."""
    floor = log_p_floor(xp, lp.dtype)
    return xp.where(lp < floor, floor, lp)  # elementwise, not clip: dask keeps its chunks


def sum_p_log_p(xp: Any, finite_lp: Any) -> Any:
    """``sum_c p_c log p_c`` per row (log p finite): minus the entropy."""
    return xp.sum(xp.exp(finite_lp) * finite_lp, axis=-1)


def take_along_last(xp: Any, z: Any, index: Any) -> Any:
    """``z[..., index]`` for an ``index`` of shape ``(..., 1)`` (valid indices)."""
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(z, index, axis=-1)
    # dask has none: select with the one-hot mask (where: -inf elsewhere is harmless)
    return xp.sum(xp.where(one_hot(xp, index, z.shape[-1]), z, 0.0), axis=-1, keepdims=True)


def nll_at_target(xp: Any, lp: Any, indices: Any) -> Any:
    """``-lp[..., y]`` per position from log p in full, ``indices`` (valid ones) of the
    positions' shape: cross entropy at the target (torch's is ``nll_loss``, one op where
    this is three)."""
    return -xp.squeeze(take_along_last(xp, lp, indices[..., None]), axis=-1)


def one_hot(xp: Any, index: Any, num_classes: int) -> Any:
    """``index == arange(C)``; ``index`` has shape ``(..., 1)``."""
    return index == xp.arange(num_classes, dtype=index.dtype, device=device(index))


def sum_p_by_level(xp: Any, finite_lp: Any, index: Any, off: float, on: float) -> Any:
    """``sum_c a_c p_c`` per row, ``a_c`` the level ``on`` at the target class and ``off``
    at every other: MIX-ENT's reverse cross entropy of a one-hot target (``a_c =
    -log(q_c + eps)``), summed from its terms (``off (1 - p_y)`` would round the small
    ones away)."""
    p = xp.exp(finite_lp)  # (each product in p's dtype: a level is a Python number)
    return xp.sum(xp.where(one_hot(xp, index, finite_lp.shape[-1]), on * p, off * p), axis=-1)


def softmax_affine(xp: Any, z: Any, top: Any, norm: Any, p_coef: Any, index: Any,
                   onehot_coef: Any, log_p_coef: Any = None, overwrite: bool = False) -> Any:
    """``p * (p_coef + log_p_coef * log p) + onehot(index) * onehot_coef``: the gradient of
    every loss with a class-index target is of this form (see ``terms.py``).

    ``overwrite``: ``z`` is a buffer of the caller's own that it reads no more (the linear
    head's chunk of logits), which a kernel may write the result into (one buffer of the
    logits' size where there would be two); the definition here writes nothing.

    ``p_coef`` has shape ``(..., 1)``; ``onehot_coef`` and ``log_p_coef`` one number per
    row. ``p = exp(z - row_max) / exp(log_norm)``: ``exp(z - row_max)`` is the forward's
    own (the row sums), which a compiler then computes once for both passes, as it does
    for its own cross entropy.
    """
    factor = p_coef
    if log_p_coef is not None:  # only a product with log p needs it finite (exp(-inf) = 0)
        factor = p_coef + log_p_coef[..., None] * finite_log_p(xp, log_p(xp, z, top, norm))
    scaled = xp.exp(z - top) * (factor / xp.exp(norm))
    return xp.where(one_hot(xp, index, z.shape[-1]), scaled + onehot_coef[..., None], scaled)


def add_product(xp: Any, total: Any, a: Any, b: Any) -> Any:
    """``total + a @ b``: the linear head's gradient of the classifier, summed over the
    chunks (``total`` is a buffer of the head's own)."""
    total += a @ b  # in place where the namespace writes in place, else rebound
    return total


@dataclass(frozen=True)
class Kernels:
    """One library's implementation of each primitive (fields default to the array-API
    definitions above): the one way a backend specialises the math. A kernel takes the
    namespace first, as the definitions do, and returns the same values; it may write into
    buffers it allocated itself, and ``finite_log_p`` may overwrite its argument (the
    forward passes it a fresh log p), as may ``times_slope`` and ``zero_rows`` their
    ``dz`` (a gradient ``positions.gradients`` has just built) and ``add_product`` its
    ``total``.
    ``soft_cap`` and ``soft_cap_with_slope`` never write into ``z``: it is the caller's
    logits, which the backward keeps and caps again.

    ``softmax_affine`` may write into ``z`` where its caller passes ``overwrite=True``.
    ``scan`` is not a primitive but how the linear head loops over its chunks: None, a
    Python loop; or a loop primitive with ``jax.lax.scan``'s contract
    (``scan(body, carry, chunks) -> (carry, stacked)``), one body over equal chunks, which
    a compiler compiles once instead of unrolling (JAX under tracing).
    An unknown field is a ``TypeError``, so a misspelt kernel cannot silently go unused.
    """

    row_stats: Callable = row_stats
    sum_exp_shifted: Callable = sum_exp_shifted
    take_along_last: Callable = take_along_last
    nll_at_target: Callable = nll_at_target
    log_p: Callable = log_p
    finite_log_p: Callable = finite_log_p
    sum_p_log_p: Callable = sum_p_log_p
    sum_p_by_level: Callable = sum_p_by_level
    softmax_affine: Callable = softmax_affine
    soft_cap: Callable = soft_cap
    soft_cap_with_slope: Callable = soft_cap_with_slope
    times_slope: Callable = times_slope
    zero_rows: Callable = zero_rows
    add_product: Callable = add_product
    scan: Callable | None = None


GENERIC = Kernels()  # the definitions themselves: what every other namespace runs


# --- the public primitives (along any axis; the framework's own autograd differentiates them)


def log_softmax(xp: Any, z: Any, axis: int = -1) -> Any:
    """``(z - m) - log(sum(exp(z - m)))`` along ``axis``, ``m`` the row maximum, as the
    losses compute it. A row of only -inf has no probability anywhere: its log p is -inf
    throughout (a loss on it is +inf, not NaN). NaN and +inf give NaN."""
    m = xp.max(z, axis=axis, keepdims=True)
    m = xp.where(m == -math.inf, 0.0, m)
    shifted = z - m
    total = xp.sum(xp.exp(shifted), axis=axis, keepdims=True)
    return shifted - xp.log(xp.where(total == 0, 1.0, total))


def softmax(xp: Any, z: Any, axis: int = -1) -> Any:
    return xp.exp(log_softmax(xp, z, axis))


def entropy(xp: Any, z: Any, axis: int = -1) -> Any:
    """Entropy of ``softmax(z)`` along ``axis`` in nats: a plain composition that any
    autograd differentiates (no kernels; those serve the losses' own passes)."""
    lp = log_softmax(xp, z, axis)
    return 0.0 - xp.sum(xp.exp(lp) * finite_log_p(xp, lp), axis=axis)  # +0, not -0
