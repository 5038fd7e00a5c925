"""The public functions: validate, then hand the shared math to the logits' adapter.

Each loss is a stub (its signature and docstring) attached by :func:`_define` to its
entry of the registry, ``entroloss._losses``; every loss then runs the same path:
``_prepare`` checks the arguments and builds the static :class:`_math.Spec`, and the
adapter of the logits' library evaluates ``_math.forward`` (and its backward).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple, TypeVar

from . import _arrays, _losses, _math
from . import _validate as check
from ._losses import SLOT_DEFAULTS, SLOTS, LossDef

__all__ = [
    "cross_entropy",
    "min_ent",
    "mix_ent",
    "adaptive_ce",
    "focal",
    "entropy",
    "log_softmax",
    "softmax",
    "value_and_grad",
]

# An array of any array-API library; a result has the logits' type (library, device, dtype).
Array = TypeVar("Array")
Reduction = Literal["mean", "sum", "none"]

# The keywords every loss takes, beyond its own (LossDef.option_names).
COMMON_OPTIONS = ("axis", "weight", "ignore_index", "label_smoothing", "reduction", "validate",
                  "chunk_size", "softcap", "z_loss")


class _Prepared(NamedTuple):
    """A validated call: everything an adapter needs, plus which scalars are arrays."""

    xp: Any
    spec: _math.Spec
    logits: Any
    target: Any
    weight: Any
    scalars: _math.Scalars
    learnt: dict  # public name -> slot, for the weights and bases given as arrays


@dataclass(frozen=True)
class _Public:
    """A public loss: its registry entry and its keyword defaults (from its signature)."""

    definition: LossDef
    defaults: dict

    def options(self, given: dict) -> dict:
        unknown = given.keys() - self.defaults.keys()
        if unknown:
            raise TypeError(f"{self.definition.name}() got an unexpected keyword argument "
                            f"{min(unknown)!r}")
        return {**self.defaults, **given}


_PUBLIC: dict = {}  # public function -> _Public

F = TypeVar("F", bound=Callable)


def _define(definition: LossDef) -> Callable[[F], F]:
    """Make the decorated stub the public function of ``definition``: the stub gives the
    signature and the docstring, the registry what it computes."""

    def attach(stub: F) -> F:
        parameters = inspect.signature(stub).parameters.values()
        defaults = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
        expected = set(definition.option_names()) | set(COMMON_OPTIONS)
        if set(defaults) != expected:  # the stub and its entry must name the same options
            raise TypeError(f"{stub.__name__}'s keywords {sorted(defaults)} are not its "
                            f"entry's {sorted(expected)}")
        public = _Public(definition, defaults)

        def loss(logits: Any, target: Any, /, **options: Any) -> Any:
            p = _prepare_cached(definition, logits, target, public.options(options))
            return _adapter(p.logits).loss(p.xp, p.spec, p.logits, p.target, p.weight, p.scalars)

        # Python's own errors (a missing target, a third positional) name the loss
        loss.__code__ = loss.__code__.replace(co_name=stub.__name__)
        if hasattr(loss.__code__, "co_qualname"):
            loss.__code__ = loss.__code__.replace(co_qualname=stub.__name__)
        functools.update_wrapper(loss, stub)
        _PUBLIC[loss] = public
        return loss  # type: ignore[return-value]

    return attach


def _adapter(logits: Any) -> Any:
    from entroloss import backends

    return backends.adapter_for(logits)


def _own_options(definition: LossDef, o: dict) -> tuple[float, float]:
    """``(gamma, eps)``: the loss's own, checked, or the values its entry fixes."""
    gamma = definition.gamma
    if gamma is None:
        gamma = check.real_option("gamma", o["gamma"], low=0.0, what=">= 0")
    eps = 1e-6
    if definition.takes_eps:
        eps = check.real_option("eps", o["eps"], low=0.0, low_open=True, what="> 0")
    return gamma, eps


def _prepare(definition: LossDef, logits: Any, target: Any, o: dict) -> _Prepared:
    """Check every argument (the loss's own options first), then build the spec."""
    gamma, eps = _own_options(definition, o)
    softcap, z_loss = check.logit_options(o["softcap"], o["z_loss"])
    xp = check.namespace_of_logits(logits)
    axis = check.normalize_axis(o["axis"], logits.ndim)
    num_classes = logits.shape[axis]
    if num_classes == 0:
        raise ValueError(f"logits have 0 classes along axis {axis}; at least 1 is needed")
    validate = check.check_validate(o["validate"])
    reduction = check.check_reduction(o["reduction"])
    chunk_size = check.check_chunk_size(o["chunk_size"])
    ignore_index = check.check_ignore_index(o["ignore_index"])
    label_smoothing = check.real_option(
        "label_smoothing", o["label_smoothing"], low=0.0, high=1.0, what="in [0, 1]"
    )
    target = check.same_library(xp, logits, "target", target)
    soft = check.target_kind(xp, logits, target, axis)
    if soft and ignore_index is not None:
        raise ValueError("ignore_index applies to class-index targets only, not to soft targets")
    if not soft and ignore_index is not None:
        check.ignore_index_fits(xp, target, ignore_index)
    reads = check.reads_data(validate, logits)
    weight = check.class_weight(xp, logits, o["weight"], num_classes, reads)
    scalars, learnt = _scalars(xp, logits, definition, o, reads)
    indices_checked = _read_target(xp, target, soft, axis, num_classes, ignore_index, reads)
    spec = _math.Spec(axis=axis, soft=soft, reduction=reduction, gamma=gamma,
                      regularizer=definition.regularizer, eps=eps,
                      label_smoothing=label_smoothing, ignore_index=ignore_index,
                      indices_checked=indices_checked, chunk_size=chunk_size,
                      softcap=softcap, z_loss=z_loss)
    return _Prepared(xp, spec, logits, target, weight, scalars, learnt)


def _read_target(xp: Any, target: Any, soft: bool, axis: int, num_classes: int,
                 ignore_index: int | None, reads: bool) -> bool:
    """The target's data checks (where ``reads``); True if the class indices were read."""
    if not (reads and check.is_concrete(target)):
        return False
    if soft:
        check.soft_rows(xp, target, axis)
        return False
    return check.class_indices(xp, target, num_classes, ignore_index)


def _scalars(xp: Any, logits: Any, definition: LossDef, o: dict, reads: bool) -> tuple:
    """The four scalars from the loss's public names (checked in slot order), and which
    public names were given as arrays."""
    public = {slot: name for name, slot in definition.scalars.items()}
    values, learnt = [], {}
    for slot in SLOTS:
        name = public.get(slot)
        if name is None:
            values.append(SLOT_DEFAULTS[slot])
            continue
        value = check.scalar_param(xp, logits, name, o[name], base=slot.endswith("base"),
                                   data_checks=reads)
        if not isinstance(value, float):
            learnt[name] = slot
        values.append(value)
    return _math.Scalars(*values), learnt


# --- the static part of a call, cached ------------------------------------------------------

# What _prepare checks and builds from Python values and from the arrays' type, dtype,
# shape and device alone, kept under a key of exactly those: a repeated call (a training
# loop) then runs only the checks that read data. Any option takes part in the key by
# its value, so that a new option needs nothing here.
_STATIC_CALLS: dict = {}
_STATIC_CALLS_MAX = 256  # cleared when full: shapes that vary without end cannot grow it
_PYTHON_VALUES = frozenset({bool, int, float, str, type(None)})
_ARRAY = object()  # an option given as an array: its checks run on every call


class _Static(NamedTuple):
    """The part of a prepared call its key determines."""

    xp: Any
    spec: _math.Spec
    scalars: _math.Scalars  # rebuilt per call where a weight or base is an array
    reads: bool  # the data checks run (validate and the sync policy)
    arrays: bool  # an option (class weights, a weight or base) is an array


def _prepare_cached(definition: LossDef, logits: Any, target: Any, o: dict) -> _Prepared:
    """:func:`_prepare`, the static part from the cache where this key was seen before."""
    key = _static_key(definition, logits, target, o)
    static = None if key is None else _STATIC_CALLS.get(key)
    if static is not None:
        return _bind(definition, static, logits, target, o)
    p = _prepare(definition, logits, target, o)
    if key is not None and p.target is target:  # (a converted target is converted each call)
        if len(_STATIC_CALLS) >= _STATIC_CALLS_MAX:
            _STATIC_CALLS.clear()
        arrays = any(part is _ARRAY for part in key)
        reads = check.reads_data(o["validate"], logits)
        _STATIC_CALLS[key] = _Static(p.xp, p.spec, p.scalars, reads, arrays)
    return p


def _static_key(definition: LossDef, logits: Any, target: Any, o: dict) -> tuple | None:
    """The key of a call's static part; None where it is not cached: an argument that is
    neither an array nor a Python value (its checks will say what is wrong), or inside
    torch.compile, which must not trace a mutation of the cache."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_compiling():
        return None
    try:
        key = [definition.name, *_described(logits), *_described(target)]
    except (AttributeError, TypeError):
        return None
    for value in o.values():
        kind = type(value)
        if kind in _PYTHON_VALUES:
            key += (kind, value)  # the type too: True and 1 are checked differently
        elif hasattr(value, "shape"):
            key.append(_ARRAY)
        else:
            return None
    key = tuple(key)
    try:
        hash(key)  # a device or dtype of a library that does not hash them
    except TypeError:
        return None
    return key


def _described(x: Any) -> tuple:
    return type(x), x.dtype, tuple(x.shape), _arrays.device(x)


def _bind(definition: LossDef, static: _Static, logits: Any, target: Any, o: dict) -> _Prepared:
    """A call whose static part is known: the checks that read its data, in
    :func:`_prepare`'s order, and the arrays' own checks."""
    xp, spec, reads = static.xp, static.spec, static.reads
    num_classes = logits.shape[spec.axis]
    weight, scalars, learnt = o["weight"], static.scalars, {}
    if static.arrays:
        weight = check.class_weight(xp, logits, weight, num_classes, reads)
        scalars, learnt = _scalars(xp, logits, definition, o, reads)
    indices_checked = _read_target(xp, target, spec.soft, spec.axis, num_classes,
                                   spec.ignore_index, reads)
    if indices_checked != spec.indices_checked:
        spec = dataclasses.replace(spec, indices_checked=indices_checked)
    return _Prepared(xp, spec, logits, target, weight, scalars, learnt)


@_define(_losses.CROSS_ENTROPY)
def cross_entropy(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    base: float | Array = math.e,
    reduction: Reduction = "mean",
    validate: bool | Literal["eager"] = True,
    chunk_size: int | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> Array:
    """Cross entropy between ``softmax(logits)`` and the target, as torch computes it.

    Per position, with ``p = softmax(logits)``::

        l = -sum_c w_c q_c log(p_c) / ln(b),   q = (1 - eps) onehot(y) + eps / C

    Args:
      logits: floating array ``(..., C, ...)`` with the classes along ``axis``.
      target: integer class indices with the logits' shape minus the class axis, or
        probabilities with the logits' shape (soft targets, which torch and JAX
        differentiate). An array of the logits' library; with JAX logits a NumPy array
        too, as ``jnp`` takes one.
      axis: the class axis (torch's layout for ``(N, C, d1, ...)`` is ``axis=1``).
      weight: class weights ``w``, shape ``(C,)``, non-negative.
      ignore_index: class index whose positions contribute 0 and are not counted.
      label_smoothing: ``epsilon`` in ``[0, 1]``.
      base: logarithm base ``b`` > 1; a 0-d array makes it differentiable.
      reduction: ``"mean"`` (divided by the summed weight of the counted positions),
        ``"sum"`` or ``"none"``.
      validate: read the data to check class indices, soft-target rows, class weights
        and bases given as arrays. ``True`` reads it where that costs no device-to-host
        sync (host arrays); on an accelerator, as under ``jax.jit``, an out-of-range class
        index then makes its position NaN and the other data checks are skipped.
        ``"eager"`` reads it on an accelerator too (a sync per call); ``False`` never.
      chunk_size: process this many positions (rows) at a time and keep no
        ``log p`` for the backward, which recomputes it chunk by chunk: the memory beyond
        the logits is then the gradient plus a few ``chunk_size × C`` temporaries, for
        very large vocabularies (the same numbers, about one more pass over the logits).
        ``None`` processes all positions at once.
      softcap: soft-cap the logits before anything else, ``z -> softcap * tanh(z /
        softcap)`` (Gemma 2), a Python number > 0; ``None`` leaves them as they are. A
        ``-inf`` logit (a masked class) stays ``-inf``.
      z_loss: add ``z_loss * s * logsumexp(z)^2`` (PaLM's z-loss, of the capped logits;
        ``s`` the class weight of the target, 1 for soft targets) at every counted
        position, a Python number >= 0; it is reduced with the loss ("mean" divides it
        by the same denominator), 0 at ignored positions. ``0.0`` adds nothing.

    Returns:
      The loss in the logits' namespace, dtype and device; shape ``()`` or, with
      ``reduction="none"``, the logits' shape minus the class axis.

    Example (uniform logits over 4 classes give ``ln 4``, or 2 bits; ``logsumexp = ln 4``)::

      >>> import numpy as np, entroloss as el
      >>> logits = np.zeros((3, 4))
      >>> print(round(float(el.cross_entropy(logits, np.array([0, 2, 3]))), 4))
      1.3863
      >>> print(float(el.cross_entropy(logits, np.array([0, 2, 3]), base=2)))
      2.0
      >>> # the z-loss adds 0.5 logsumexp(z)^2 = 0.5 (ln 4)^2
      >>> print(round(float(el.cross_entropy(logits, np.array([0, 2, 3]), z_loss=0.5)), 4))
      2.3472

    References: ``torch.nn.functional.cross_entropy``; A. Garg, "Cross entropy" (2020),
    on cross entropy as entropy plus KL divergence and as the negative log likelihood.
    """


@_define(_losses.MIN_ENT)
def min_ent(
    logits: Array,
    target: Array,
    /,
    *,
    ce_weight: float | Array = 1.0,
    entropy_weight: float | Array = 1.0,
    ce_base: float | Array = math.e,
    entropy_base: float | Array = math.e,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate: bool | Literal["eager"] = True,
    chunk_size: int | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> Array:
    """MIN-ENT: cross entropy plus the entropy of the prediction.

    Per position::

        l = ce_weight * CE / ln(ce_base) + entropy_weight * s * H(p) / ln(entropy_base)
        H(p) = -sum_c p_c log(p_c)

    ``s`` is the class weight of the target (1 for soft targets). Any of the four
    weights and bases may be a 0-d array, and then receives a gradient; a base must be
    > 1. With ``entropy_weight=0`` this is `cross_entropy` exactly. Other arguments as in
    `cross_entropy`.

    Example (uniform logits: ``CE = H = ln 4``)::

      >>> import numpy as np, entroloss as el
      >>> print(round(float(el.min_ent(np.zeros((2, 4)), np.array([1, 3]))), 4))
      2.7726

    References: "Regularizing cross entropy loss via minimum entropy and K-L divergence"
    (MIN-ENT, arXiv 2501.13709).
    """


@_define(_losses.MIX_ENT)
def mix_ent(
    logits: Array,
    target: Array,
    /,
    *,
    ce_weight: float | Array = 1.0,
    reverse_weight: float | Array = 1.0,
    ce_base: float | Array = math.e,
    reverse_base: float | Array = math.e,
    eps: float = 1e-6,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate: bool | Literal["eager"] = True,
    chunk_size: int | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> Array:
    """MIX-ENT: cross entropy plus the reverse cross entropy ``H(p) + KL(p || q)``.

    Per position::

        l = ce_weight * CE / ln(ce_base) + reverse_weight * s * R / ln(reverse_base)
        R = -sum_c p_c log(q_c + eps) = H(p) + KL(p || q + eps)

    The regularizer is the paper's "minimum-entropy term plus a K-L term with target and
    prediction swapped"; ``eps`` keeps the log of a one-hot target finite. The paper's own
    code is not public: this is the definition this package commits to (see the math
    page). With ``reverse_weight=0`` this is `cross_entropy` exactly. Other arguments as
    in `cross_entropy`.

    Example (uniform logits over 4 classes, one-hot target:
    ``R = -(log(1+eps) + 3 log(eps)) / 4``)::

      >>> import numpy as np, entroloss as el
      >>> print(round(float(el.mix_ent(np.zeros((1, 4)), np.array([0]))), 4))
      11.7479

    References: "Regularizing cross entropy loss via minimum entropy and K-L divergence"
    (MIX-ENT, arXiv 2501.13709).
    """


@_define(_losses.FOCAL)
def focal(
    logits: Array,
    target: Array,
    /,
    *,
    gamma: float = 2.0,
    base: float | Array = math.e,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate: bool | Literal["eager"] = True,
    chunk_size: int | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> Array:
    """Focal loss over the target distribution.

    Per position::

        l = -sum_c w_c q_c (1 - p_c)^gamma log(p_c) / ln(b)

    ``gamma=0`` is `cross_entropy`; ``gamma=1`` is `adaptive_ce`. Other
    arguments as in `cross_entropy`.

    Example (uniform logits over 4 classes: ``(3/4)^2 ln 4``)::

      >>> import numpy as np, entroloss as el
      >>> print(round(float(el.focal(np.zeros((1, 4)), np.array([2]), gamma=2.0)), 4))
      0.7798

    References: Lin et al., "Focal Loss for Dense Object Detection" (2017); generalises
    the linearly adaptive loss (`adaptive_ce`).
    """


@_define(_losses.ADAPTIVE_CE)
def adaptive_ce(
    logits: Array,
    target: Array,
    /,
    *,
    base: float | Array = math.e,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    validate: bool | Literal["eager"] = True,
    chunk_size: int | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> Array:
    """The linearly adaptive cross entropy ``-(1 - p_y) log p_y``.

    Per position::

        l = -sum_c w_c q_c (1 - p_c) log(p_c) / ln(b)

    which for a class index without smoothing is ``-w_y (1 - p_y) log p_y / ln b``:
    `focal` with ``gamma=1``. Arguments as in `cross_entropy`.

    Example (uniform logits over 4 classes: ``(3/4) ln 4``)::

      >>> import numpy as np, entroloss as el
      >>> print(round(float(el.adaptive_ce(np.zeros((1, 4)), np.array([2]))), 4))
      1.0397

    References: J. W. Shim, "Enhancing Cross Entropy with a Linearly Adaptive Loss Function
    for Optimized Classification Performance" (arXiv 2507.10574).
    """


# --- value_and_grad: the explicit-gradient path on every backend --------------------------


def value_and_grad(loss_fn: Callable[..., Array], logits: Array, target: Array, /,
                   **options: Any) -> tuple[Array, dict[str, Array]]:
    """The loss and its hand-derived gradients, on any array namespace.

    ``loss_fn`` is one of `cross_entropy`, `min_ent`, `mix_ent`,
    `adaptive_ce`, `focal`; ``options`` are its keyword arguments. Returns
    ``(loss, grads)`` where ``grads["logits"]`` has the logits' shape and dtype, and
    ``grads[name]`` is present for every weight or base passed as a 0-d array. With
    ``reduction="none"`` the gradients are those of the sum of the per-position losses.

    This is how NumPy and CuPy users train, and the reference that torch autograd and
    ``jax.grad`` are checked against.

    Example (a gradient step on uniform logits raises the target's logit)::

      >>> import numpy as np, entroloss as el
      >>> loss, grads = el.value_and_grad(el.cross_entropy, np.zeros((1, 4)), np.array([1]))
      >>> print(grads["logits"])  # p - onehot(y)
      [[ 0.25 -0.75  0.25  0.25]]
    """
    public = _PUBLIC.get(loss_fn) if callable(loss_fn) else None
    if public is None:
        names = ", ".join(d.name for d in _losses.LOSSES)
        raise TypeError(f"loss_fn must be one of entroloss's losses ({names}), got {loss_fn!r}")
    p = _prepare_cached(public.definition, logits, target, public.options(options))
    from entroloss.backends import explicit

    run = getattr(_adapter(p.logits), "value_and_grad", explicit.value_and_grad)
    value, d_logits, d_scalars = run(p.xp, p.spec, p.logits, p.target, p.weight, p.scalars)
    grads = {"logits": d_logits}
    for name, slot in p.learnt.items():
        grads[name] = p.xp.astype(getattr(d_scalars, slot), getattr(p.scalars, slot).dtype)
    return value, grads


# --- the primitives ------------------------------------------------------------------------


def _logits_in_compute_dtype(x: Any, axis: Any, softcap: Any) -> tuple:
    """The namespace, the logits in the compute dtype (soft-capped with ``softcap``, as
    the losses cap them) and the axis, normalised."""
    softcap, _ = check.logit_options(softcap, 0.0)
    xp = check.namespace_of_logits(x)
    axis = check.normalize_axis(axis, x.ndim)
    z = xp.astype(x, _math.compute_dtype(xp, x.dtype))
    return xp, z if softcap is None else _math.soft_cap(xp, z, softcap), axis


def entropy(logits: Array, /, *, axis: int = -1, base: float | Array = math.e,
            softcap: float | None = None) -> Array:
    """Entropy of ``softmax(logits)`` along ``axis``: ``-sum_c p_c log p_c / ln b``.

    Finite for ``-inf`` (masked) logits; differentiable through each framework's own
    autograd. Lies in ``[0, log_b C]``. ``softcap`` caps the logits first, as in
    `cross_entropy`, so that this is the entropy of the distribution a capped loss trains.

    Example::

      >>> import numpy as np, entroloss as el
      >>> print(el.entropy(np.array([[0.0, 0.0], [0.0, -np.inf]]), base=2))
      [1. 0.]
    """
    xp, z, axis = _logits_in_compute_dtype(logits, axis, softcap)
    base = check.scalar_param(xp, logits, "base", base, base=True, data_checks=True,
                              any_base=True)
    h = _math.entropy(xp, z, axis)
    if not isinstance(base, float):
        base = xp.astype(base, h.dtype)
    return xp.astype(h / _math.ln(xp, base), logits.dtype)


def log_softmax(x: Array, /, *, axis: int = -1, softcap: float | None = None) -> Array:
    """``x - logsumexp(x)`` along ``axis``, stable for large and ``-inf`` entries;
    ``softcap`` caps ``x`` first, as in `cross_entropy`.

    Example::

      >>> import numpy as np, entroloss as el
      >>> print(np.exp(el.log_softmax(np.array([0.0, np.log(3.0)]))))
      [0.25 0.75]
    """
    xp, z, axis = _logits_in_compute_dtype(x, axis, softcap)
    return xp.astype(_math.log_softmax(xp, z, axis), x.dtype)


def softmax(x: Array, /, *, axis: int = -1, softcap: float | None = None) -> Array:
    """``exp(log_softmax(x))`` along ``axis``; ``softcap`` caps ``x`` first, as in
    `cross_entropy` (the distribution a capped loss trains, e.g. to sample from).

    Example::

      >>> import numpy as np, entroloss as el
      >>> print(el.softmax(np.array([0.0, np.log(3.0)])))
      [0.25 0.75]
    """
    xp, z, axis = _logits_in_compute_dtype(x, axis, softcap)
    return xp.astype(_math.softmax(xp, z, axis), x.dtype)
