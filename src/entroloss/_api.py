"""The public functions: validate, then hand the shared math to the logits' adapter.

One function per entry of the registry (``entroloss._losses``), generated here with its
signature and docstring; every loss runs the same path: ``_prepare`` checks the arguments
and builds the static :class:`_math.Spec`, and the adapter of the logits' library
evaluates ``_math.forward`` (and its backward).
"""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any, Callable, Protocol, TypeVar

from . import _arrays, _docs, _math, _sharded
from ._math.target import Target
from . import _validate as check
from ._losses import LOSSES, LossDef
from ._prepare import (BOUND_CALLS, BOUND_TYPES, COMMON, bound_key, defaults, prepare_cached,
                       remember_call, with_defaults)

__all__ = ["entropy", "log_softmax", "softmax", "value_and_grad", "PUBLIC"]


class _HasDtype(Protocol):
    """What the functions below read of an array themselves (the rest goes through its
    namespace): its dtype, shape and number of dimensions."""

    @property
    def dtype(self) -> Any: ...

    @property
    def shape(self) -> tuple: ...

    @property
    def ndim(self) -> int: ...


# An array of any array-API library; a result has the logits' type (library, device, dtype).
Array = TypeVar("Array", bound=_HasDtype)

PUBLIC: dict[Callable, LossDef] = {}  # public loss function -> its registry entry


def _make(definition: LossDef) -> Callable:
    """The public function of ``definition``: its signature and docstring from the
    registry, its body the one path of every loss (prepare, then the logits' adapter)."""
    name = definition.name
    every = defaults(definition)

    def loss(logits: Any, target: Any, /, **options: Any) -> Any:
        # a repetition of a call bound before (_prepare.remember_call): its data checks, its
        # ops, looked up here: at small sizes a training step feels each Python call
        bound = BOUND_TYPES.get(type(logits))
        if bound is not None and not bound.tracing():
            call = BOUND_CALLS.get(bound_key(name, logits, target, options, bound))
            if call is not None:
                return call(logits, target)
        given = options
        if _sharded.has_dtensor(logits, target, options=options):
            logits, target, options = _local(logits, target, options)
        o = with_defaults(name, every, options)
        p = prepare_cached(definition, logits, target, o)
        adapter = _adapter(p.logits)
        run = (remember_call(definition, logits, target, given, o, p, adapter)
               if options is given else None)
        if run is not None:  # the call that binds too: the ops its repetitions will run
            return run(logits, target)
        return adapter.loss(p.xp, p.spec, p.logits, p.target, p.weight, p.scalars,
                            sample_weight=p.sample_weight, denominator=p.denominator)

    # Python's own errors (a missing target, a third positional) name the loss
    loss.__code__ = loss.__code__.replace(co_name=name)
    if sys.version_info >= (3, 11):  # co_qualname is new in 3.11 (mypy checks the branch there)
        loss.__code__ = loss.__code__.replace(co_qualname=name)
    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = _docs.plain(definition)
    loss.__signature__ = signature(definition, ("logits", "target"))  # type: ignore[attr-defined]
    PUBLIC[loss] = definition
    return loss


def _local(logits: Any, target: Any, options: dict) -> tuple:
    """A call given DTensors, as the local tensors and the mesh's group (``_sharded``):
    the logits sharded on their class axis, or replicated; a soft target likewise."""
    axis = options.get("axis", -1)
    soft = getattr(target, "ndim", None) == logits.ndim and target.is_floating_point()
    arrays, options = _sharded.unwrap({"logits": (logits, axis),
                                       "target": (target, axis if soft else None)},
                                      options, "logits")
    return arrays["logits"], arrays["target"], options


def signature(definition: LossDef, positional: tuple[str, ...], *, first: tuple = (),
              skip: tuple[str, ...] = ()) -> inspect.Signature:
    """The loss's own keywords, then the common ones (less ``skip``), after ``first``."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY, annotation="Array")
              for n in positional]
    params += list(first)
    params += [inspect.Parameter(s.name, kw, default=s.default, annotation="float | Array")
               for s in definition.parameters]
    params += [inspect.Parameter(o.name, kw, default=o.default, annotation="float")
               for o in definition.options]
    params += [inspect.Parameter(k, kw, default=d, annotation=a)
               for k, (d, a) in COMMON.items() if k not in skip]
    return inspect.Signature(params, return_annotation="Array")


def _adapter(logits: Any) -> Any:
    from entroloss import backends

    return backends.adapter_for(logits)


for _definition in LOSSES:
    globals()[_definition.name] = _make(_definition)


# --- value_and_grad: the explicit-gradient path on every backend --------------------------


def value_and_grad(loss_fn: Callable[..., Array], logits: Array, target: Array, /,
                   **options: Any) -> tuple[Array, dict[str, Array]]:
    """The loss and its hand-derived gradients, on any array namespace.

    This is how NumPy and CuPy users train, and the reference that torch autograd and
    ``jax.grad`` are checked against. With ``reduction="none"`` the gradients are those of
    the sum of the per-position losses.

    Args:
        loss_fn: one of the package's losses (``entroloss.cross_entropy``, ...; the
            linear heads have `linear_value_and_grad`).
        logits: as for ``loss_fn``.
        target: as for ``loss_fn``.
        **options: ``loss_fn``'s keyword arguments.

    Returns:
        ``(loss, grads)``: ``grads["logits"]`` in the logits' shape and dtype, and
        ``grads[name]`` for every weight or base passed as a 0-d array.

    Examples:
        A gradient step on uniform logits raises the target's logit (``p - onehot(y)``):

        >>> import numpy as np, entroloss as el
        >>> loss, grads = el.value_and_grad(el.cross_entropy, np.zeros((1, 4)), np.array([1]))
        >>> print(grads["logits"])
        [[ 0.25 -0.75  0.25  0.25]]
    """
    definition = PUBLIC.get(loss_fn) if callable(loss_fn) else None
    if definition is None:
        names = ", ".join(d.name for d in LOSSES)
        hint = ""
        if getattr(loss_fn, "__name__", "").startswith("linear_"):
            hint = "; for a linear-head loss use entroloss.linear_value_and_grad"
        raise TypeError(f"loss_fn must be one of entroloss's losses ({names}), got "
                        f"{loss_fn!r}{hint}")
    if _sharded.has_dtensor(logits, target, options=options):  # the gradient of the local slice
        logits, target, options = _local(logits, target, options)
    p = prepare_cached(definition, logits, target,
                       with_defaults(definition.name, defaults(definition), options))
    from entroloss.backends import explicit

    run = getattr(_adapter(p.logits), "value_and_grad", explicit.value_and_grad)
    value, d_logits, d_scalars = run(p.xp, p.spec, p.logits, p.target, p.weight, p.scalars,
                                     sample_weight=p.sample_weight, denominator=p.denominator)
    grads = {"logits": d_logits}
    for name, slot in p.learnt.items():
        grads[name] = p.xp.astype(getattr(d_scalars, slot), getattr(p.scalars, slot).dtype)
    return value, grads


# --- the mean's divisor, for a global one ------------------------------------------------


def denominator(target: Array, /, *, weight: Array | None = None,
                ignore_index: int | None = None, sample_weight: Array | None = None,
                axis: int = -1) -> Array:
    """What ``reduction="mean"`` divides by for this batch: the local denominator.

    For class indices the summed ``sample_weight * weight[y]`` of the positions whose
    target is not ``ignore_index`` (their number without weights); for soft targets the
    number of positions (their summed ``sample_weight``). Add it over the micro-batches of
    a step (and all-reduce it over the ranks), then pass the total as every call's
    ``denominator=``: the micro-batches' losses then add up to the whole batch's loss,
    gradients included ([Normalization](normalization.md)).

    Args:
        target: class indices, or probabilities with the classes along ``axis``, as for
            the losses.
        weight: class weights ``(C,)``, as for the losses (class indices only matter).
        ignore_index: as for the losses.
        sample_weight: one weight per position, as for the losses.
        axis: the class axis of a soft target (ignored for class indices).

    Returns:
        A 0-d array of the target's library and device: in the class or sample weights'
        dtype where one is given, else the library's default floating dtype.

    Examples:
        Two of four positions ignored, class weights 1 and 3:

        >>> import numpy as np, entroloss as el
        >>> print(el.denominator(np.array([0, 1, -100, -100]), weight=np.array([1.0, 3.0]),
        ...                      ignore_index=-100))
        4.0
    """
    try:
        xp = _arrays.namespace(target)
    except TypeError:
        raise TypeError(f"target must be an array of a library supporting the array API, "
                        f"got {type(target).__name__}") from None
    if _arrays.is_dtype(xp, target, "integral"):
        soft, positions = False, tuple(target.shape)
    elif _arrays.is_dtype(xp, target, "real floating"):
        axis = check.normalize_axis(axis, target.ndim)
        soft, positions = True, tuple(target.shape[:axis]) + tuple(target.shape[axis + 1:])
    else:
        raise TypeError(f"target must hold integer class indices or floating-point "
                        f"probabilities, got {target.dtype}")
    ignore_index = check.check_ignore_index(ignore_index)
    if soft and ignore_index is not None:
        raise ValueError("ignore_index applies to class-index targets only, not to soft targets")
    reads = check.reads_data(True, target)
    if weight is not None:
        classes = weight.shape[0] if getattr(weight, "ndim", None) == 1 else 0
        weight = check.class_weight(xp, target, weight, classes, reads)
        if not soft and reads:  # the loss refuses these indices too
            check.class_indices(xp, target, classes, ignore_index)
    sample_weight = check.sample_weight(xp, target, sample_weight, positions, reads)
    given = [a for a in (weight, sample_weight) if a is not None]
    where = _arrays.device(target)
    dtype = (xp.result_type(*given) if given else
             xp.__array_namespace_info__().default_dtypes(device=where)["real floating"])
    sw = None if sample_weight is None else xp.astype(sample_weight, dtype)
    if soft:  # each position counts once (or its sample weight), whatever the class weights
        count = float(math.prod(positions)) if sw is None else xp.sum(sw)
    else:  # the losses' own rule (``Target.mean_denominator``)
        w = None if weight is None else xp.astype(weight, dtype)
        spec = _math.Spec(axis=len(positions), soft=False, ignore_index=ignore_index,
                          target_checked=True)
        shape = positions + (1 if w is None else w.shape[0],)
        count = Target(xp, spec, target, w, shape, dtype, sw).mean_denominator(
            xp.zeros(positions, dtype=dtype, device=where))
    return xp.asarray(count, dtype=dtype, device=where) if isinstance(count, float) else count


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
            softcap: float | None = None, class_group: Any = None,
            class_axis: str | None = None) -> Array:
    """Entropy of ``softmax(logits)`` along ``axis``: ``-sum_c p_c log p_c / ln b``.

    Finite for ``-inf`` (masked) logits; differentiable through each framework's own
    autograd. Lies in ``[0, log_b C]``.

    Args:
        logits: floating array with the classes along ``axis``.
        axis: the class axis.
        base: the logarithm base, > 0 and != 1 (a 0-d array is differentiable).
        softcap: cap the logits first, as `cross_entropy` does, so that this is the
            entropy of the distribution a capped loss trains; ``None``: no cap.
        class_group: the logits are this process's slice of the classes, over this
            ``torch.distributed`` process group, as for `cross_entropy` (then computed
            as `min_ent`'s entropy term, differentiated by its backward); a DTensor
            placed ``Shard`` on ``axis`` gives it.
        class_axis: the same over a JAX mesh axis, inside ``shard_map``.

    Returns:
        The entropy per position: the logits' shape minus ``axis``, their dtype.

    Examples:
        >>> import numpy as np, entroloss as el
        >>> print(el.entropy(np.array([[0.0, 0.0], [0.0, -np.inf]]), base=2))
        [1. 0.]
    """
    options = {"axis": axis, "softcap": softcap, "class_group": class_group,
               "class_axis": class_axis}
    if _sharded.has_dtensor(logits, base):
        arrays, options = _sharded.unwrap({"logits": (logits, axis), "base": (base, None)},
                                          options, "logits")
        logits, base = arrays["logits"], arrays["base"]
    if _sharded.sliced(options):
        return _sliced_entropy(logits, base, options)
    xp, z, axis = _logits_in_compute_dtype(logits, axis, softcap)
    base = check.scalar_param(xp, logits, "base", base, base=True, data_checks=True,
                              any_base=True)
    h = _math.entropy(xp, z, axis)
    if not isinstance(base, float):
        base = xp.astype(base, h.dtype)
    return xp.astype(h / _math.ln(xp, base), logits.dtype)


def _sliced_entropy(logits: Any, base: Any, options: dict) -> Any:
    """The entropy of sharded classes: MIN-ENT with ``ce_weight=0``, weight 1 on the
    entropy and reduction "none" (as ``linear_entropy``), whose sums over the classes are
    all-reduced; the target (class 0 everywhere) is never read for a gradient."""
    from ._losses import MIN_ENT
    from ._prepare import measure, prepare_call

    o = with_defaults("entropy", defaults(MIN_ENT), {**options, "reduction": "none"})
    made: dict = {}

    def local_checks() -> tuple:  # every check inside the processes' agreement
        xp = check.namespace_of_logits(logits)
        axis = check.normalize_axis(options["axis"], logits.ndim)
        positions = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])
        made["target"] = xp.zeros(positions, dtype=xp.int32, device=_arrays.device(logits))
        return measure(MIN_ENT, logits, made["target"], o)

    def build(classes: _math.ClassSlice) -> Any:
        xp = check.namespace_of_logits(logits)
        made["base"] = check.scalar_param(xp, logits, "base", base, base=True,
                                          data_checks=True, any_base=True)
        return prepare_call(MIN_ENT, logits, made["target"], o, classes)

    p = _sharded.prepare(o, logits, local_checks, build)
    scalars = _math.Scalars(0.0, math.e, 1.0, made["base"])
    return _adapter(p.logits).loss(p.xp, p.spec, p.logits, p.target, p.weight, scalars,
                                   sample_weight=None, denominator=None)


def log_softmax(x: Array, /, *, axis: int = -1, softcap: float | None = None) -> Array:
    """``x - logsumexp(x)`` along ``axis``, stable for large and ``-inf`` entries.

    Args:
        x: floating array.
        axis: the class axis.
        softcap: cap ``x`` first, as `cross_entropy` does; ``None``: no cap.

    Returns:
        ``log softmax(x)``, with ``x``'s shape and dtype.

    Examples:
        >>> import numpy as np, entroloss as el
        >>> print(np.exp(el.log_softmax(np.array([0.0, np.log(3.0)]))))
        [0.25 0.75]
    """
    xp, z, axis = _logits_in_compute_dtype(x, axis, softcap)
    return xp.astype(_math.log_softmax(xp, z, axis), x.dtype)


def softmax(x: Array, /, *, axis: int = -1, softcap: float | None = None) -> Array:
    """``exp(log_softmax(x))`` along ``axis``.

    Args:
        x: floating array.
        axis: the class axis.
        softcap: cap ``x`` first, as `cross_entropy` does (the distribution a capped loss
            trains, e.g. to sample from); ``None``: no cap.

    Returns:
        ``softmax(x)``, with ``x``'s shape and dtype.

    Examples:
        >>> import numpy as np, entroloss as el
        >>> print(el.softmax(np.array([0.0, np.log(3.0)])))
        [0.25 0.75]
    """
    xp, z, axis = _logits_in_compute_dtype(x, axis, softcap)
    return xp.astype(_math.softmax(xp, z, axis), x.dtype)
