"""The linear-head losses: from hidden states and a classifier to the loss, without the
whole logits tensor (``docs/linear.md``).

One public function per entry of the registry, generated here: ``linear_<loss>(hidden,
classifier, target, /, *, bias=None, <the plain loss's options less axis>)``, and
``linear_entropy``. The arguments go through the plain losses' pipeline (``_prepare``,
against the logits' shape ``hidden.shape[:-1] + (C,)``) after the head's own checks, then
the hidden states' adapter runs ``_math.linear``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

from . import _api, _arrays, _docs, _losses, _math, _sharded
from . import _prepare as pipeline
from . import _validate as check
from ._losses import LossDef
from ._math import linear

__all__ = ["linear_entropy", "linear_value_and_grad", "PUBLIC"]


@dataclass(frozen=True)
class LinearCall:
    """A validated call: rows ``hidden (N, H)``, the head, the target as rows, and what the
    result is reshaped to."""

    xp: Any
    spec: _math.Spec
    hidden: Any
    head: linear.Head
    target: Any
    weight: Any
    scalars: _math.Scalars
    learnt: dict  # public name -> slot, for the weights and bases given as arrays
    positions: tuple  # hidden.shape[:-1]
    keep: Any  # the rows that count (ignore_index), or None: see linear.kept_rows
    sample_weight: Any = None  # one weight per row (N,), or None
    denominator: Any = None  # what "mean" divides by, given by the call, or None


class _Shape:
    """What the target checks read of the logits: their shape (never built here)."""

    def __init__(self, shape: tuple) -> None:
        self.shape, self.ndim = shape, len(shape)


def _floating(xp: Any, name: str, value: Any) -> None:
    if not xp.isdtype(value.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating-point dtype, got {value.dtype}")


def _hidden_namespace(hidden: Any) -> Any:
    try:
        xp = _arrays.namespace(hidden)
    except TypeError:
        raise TypeError(f"hidden must be an array of a library supporting the array API "
                        f"(numpy, cupy, torch, jax, array_api_strict), got "
                        f"{type(hidden).__name__}") from None
    _floating(xp, "hidden", hidden)
    if hidden.ndim == 0:
        raise ValueError("hidden must have at least 1 dimension (the features, last), got a 0-d array")
    return xp


def _head(xp: Any, hidden: Any, classifier: Any, bias: Any) -> linear.Head:
    """The classifier ``(C, H)`` and the bias ``(C,)``, of the hidden states' library,
    device and dtype."""
    features = hidden.shape[-1]
    classifier = check.same_library(xp, hidden, "classifier", classifier)
    _floating(xp, "classifier", classifier)
    if classifier.ndim != 2 or classifier.shape[1] != features:
        raise ValueError(f"classifier must have shape (C, {features}) (classes x the hidden "
                         f"states' last dimension, torch's nn.Linear weight), got "
                         f"{tuple(classifier.shape)}")
    if classifier.shape[0] == 0:
        raise ValueError("classifier has 0 classes (rows); at least 1 is needed")
    for name, value in (("classifier", classifier), ("bias", bias)):
        if value is not None and value.dtype != hidden.dtype:
            raise TypeError(f"{name} must have the hidden states' dtype {hidden.dtype}, got "
                            f"{value.dtype}")
    if bias is not None:
        bias = check.same_library(xp, hidden, "bias", bias)
        if tuple(bias.shape) != (classifier.shape[0],):
            raise ValueError(f"bias must have shape ({classifier.shape[0]},), one entry per "
                             f"class (row of classifier), got {tuple(bias.shape)}")
    return linear.Head(classifier, bias)


def _target_kind(xp: Any, hidden: Any, target: Any, num_classes: int) -> bool:
    """True for a soft target; the shape rules name the hidden states."""
    positions = tuple(hidden.shape[:-1])
    if xp.isdtype(target.dtype, "integral") and tuple(target.shape) != positions:
        raise ValueError(f"target of class indices must have shape {positions} (hidden's "
                         f"shape {tuple(hidden.shape)} without its last dimension), got "
                         f"{tuple(target.shape)}")
    if xp.isdtype(target.dtype, "real floating") and tuple(target.shape) != positions + (num_classes,):
        raise ValueError(f"soft target (probabilities) must have shape "
                         f"{positions + (num_classes,)} (hidden's leading shape x the classes), "
                         f"got {tuple(target.shape)}")
    return check.target_kind(xp, _Shape(positions + (num_classes,)), target, len(positions))


def _prepare(definition: LossDef, hidden: Any, classifier: Any, target: Any, o: dict,
             scalars: Callable | None = None) -> LinearCall:
    """Check every argument before any work (the plain losses' steps, after the head's),
    then the spec of logits ``(N, C)``. ``scalars(xp, hidden, reads)`` overrides how the
    four scalars are read. Where the classifier's rows are sharded over processes, every
    process raises together (``_sharded``)."""
    if not _sharded.sliced(o):
        return _prepare_call(definition, hidden, classifier, target, o, scalars)

    def measure() -> tuple:
        pipeline.static_options(definition, o)
        xp = _hidden_namespace(hidden)
        head = _head(xp, hidden, classifier, o["bias"])
        target_ = check.same_library(xp, hidden, "target", target)
        return head.classifier.shape[0], math.prod(hidden.shape[:-1]), target_

    return _sharded.prepare(o, hidden, measure, lambda classes: _prepare_call(
        definition, hidden, classifier, target, o, scalars, classes))


def _prepare_call(definition: LossDef, hidden: Any, classifier: Any, target: Any, o: dict,
                  scalars: Callable | None = None,
                  classes: _math.ClassSlice | None = None) -> LinearCall:
    static = pipeline.static_options(definition, o)
    xp = _hidden_namespace(hidden)
    head = _head(xp, hidden, classifier, o["bias"])
    local_classes = head.classifier.shape[0]
    num_classes = local_classes if classes is None else classes.num_classes
    target = check.same_library(xp, hidden, "target", target)
    soft = _target_kind(xp, hidden, target, local_classes)
    pipeline.target_rules(xp, target, soft, static["ignore_index"])
    reads = check.reads_data(o["validate"], hidden, target)  # no device sync
    weight = check.class_weight(xp, hidden, o["weight"], num_classes, reads)
    sample_weight, denominator = pipeline.normalization(xp, hidden, o, static["reduction"],
                                                        tuple(hidden.shape[:-1]), reads)
    read = scalars or (lambda xp_, h, r: pipeline.scalars(xp_, h, definition, o, r))
    values, learnt = read(xp, hidden, reads)
    target_checked = pipeline.read_target(xp, target, soft, target.ndim - 1, num_classes,
                                           static["ignore_index"], reads, classes is not None)
    call = _as_rows(xp, static, soft, target_checked, hidden, head, target, weight,
                    values, learnt, classes)
    if sample_weight is not None:
        sample_weight = xp.reshape(sample_weight, (call.hidden.shape[0],))
    return dataclasses.replace(call, sample_weight=sample_weight, denominator=denominator)


def _as_rows(xp: Any, static: dict, soft: bool, target_checked: bool, hidden: Any,
             head: linear.Head, target: Any, weight: Any, values: Any, learnt: dict,
             sliced: _math.ClassSlice | None = None) -> LinearCall:
    positions = tuple(hidden.shape[:-1])
    rows, classes = math.prod(positions), head.classifier.shape[0]
    spec = pipeline.make_spec(static, axis=1, soft=soft, target_checked=target_checked,
                              classes=sliced)
    if spec.chunk_size is None:
        # of all classes where the processes hold slices: every process takes the same
        # chunks, and so the same collectives, whatever its slice
        itemsize = 8 if _math.compute_dtype(xp, hidden.dtype) == xp.float64 else 4
        spec = dataclasses.replace(spec, chunk_size=linear.default_chunk_size(
            classes if sliced is None else sliced.num_classes, itemsize,
            linear.buffers_at_peak(spec)))
    target = xp.reshape(target, (rows, classes) if soft else (rows,))
    keep = None
    if check.is_concrete(target) and _arrays.library(hidden) != "jax":
        keep = linear.kept_rows(xp, spec, target)
    return LinearCall(xp, spec, xp.reshape(hidden, (rows, hidden.shape[-1])), head, target,
                      weight, values, learnt, positions, keep)


def _local(args: tuple, options: dict) -> tuple:
    """A call given DTensors, as the local tensors and the mesh's group (``_sharded``):
    the classifier (and bias) sharded on their rows, or replicated; the hidden states
    replicated; a soft target sharded on its classes like the classifier."""
    names = ("hidden", "classifier", "target")[:len(args)]
    dims = {"hidden": None, "classifier": 0, "target": None}
    if len(args) == 3 and _floating_tensor(args[2]):
        dims["target"] = -1
    arrays, options = _sharded.unwrap({n: (a, dims[n]) for n, a in zip(names, args, strict=True)},
                                      options, "classifier")
    return tuple(arrays[n] for n in names), options


def _floating_tensor(x: Any) -> bool:
    return callable(getattr(x, "is_floating_point", None)) and bool(x.is_floating_point())


def _adapter(hidden: Any) -> Any:
    from entroloss import backends

    return backends.adapter_for(hidden, linear=True)


def _result(call: LinearCall, value: Any) -> Any:
    return call.xp.reshape(value, call.positions) if call.spec.reduction == "none" else value


# --- the public functions, one per entry of the registry ----------------------------------

PUBLIC: dict = {}  # public function -> its prepare(positional arguments, options)


def _make(definition: LossDef) -> Callable:
    name = f"linear_{definition.name}"
    defaults = {"bias": None, **pipeline.defaults(definition)}
    del defaults["axis"]  # the classes are the classifier's rows

    def prepare(args: tuple, options: dict) -> LinearCall:
        if len(args) != 3:
            raise TypeError(f"{name}() takes hidden, classifier and target, got {len(args)} "
                            f"positional argument(s)")
        if _sharded.has_dtensor(*args, options=options):
            args, options = _local(args, options)
        hidden, classifier, target = args
        return _prepare(definition, hidden, classifier, target,
                        pipeline.with_defaults(name, defaults, options))

    def loss(hidden: Any, classifier: Any, target: Any, /, **options: Any) -> Any:
        call = prepare((hidden, classifier, target), options)
        return _result(call, _adapter(hidden).loss(call))

    loss.__code__ = loss.__code__.replace(co_name=name)
    if sys.version_info >= (3, 11):  # co_qualname is new in 3.11 (mypy checks the branch there)
        loss.__code__ = loss.__code__.replace(co_qualname=name)
    loss.__name__ = loss.__qualname__ = name
    bias = inspect.Parameter("bias", inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation="Array | None")
    loss.__signature__ = _api.signature(  # type: ignore[attr-defined]
        definition, ("hidden", "classifier", "target"), first=(bias,), skip=("axis",))
    loss.__doc__ = _docs.linear(definition)
    PUBLIC[loss] = prepare
    return loss


for _definition in _losses.LOSSES:
    globals()[f"linear_{_definition.name}"] = _make(_definition)


# --- the entropy: MIN-ENT's regularizer alone, per position ---------------------------------

_ENTROPY_DEFAULTS = {"bias": None, "base": math.e, "chunk_size": None, "softcap": None,
                     "class_group": None, "class_axis": None}


def _prepare_entropy(args: tuple, options: dict) -> LinearCall:
    """``linear_entropy`` is the linear-head MIN-ENT with ``ce_weight=0``, weight 1 on the
    entropy and reduction "none": the entropy's value and gradient are defined once, in
    ``_math.terms``; the target (class 0 everywhere) is then never read for a gradient."""
    if len(args) != 2:
        raise TypeError(f"linear_entropy() takes hidden and classifier, got {len(args)} "
                        f"positional argument(s)")
    if _sharded.has_dtensor(*args, options=options):
        args, options = _local(args, options)
    o = pipeline.with_defaults("linear_entropy", _ENTROPY_DEFAULTS, options)
    hidden, classifier = args
    xp = _hidden_namespace(hidden)
    where = _arrays.device(hidden)
    dummy = xp.zeros(tuple(hidden.shape[:-1]), dtype=xp.int32, device=where)

    def scalars(xp_: Any, h: Any, validate: bool) -> tuple:
        base = check.scalar_param(xp_, h, "base", o["base"], base=True, data_checks=True,
                                  any_base=True)
        learnt = {} if isinstance(base, float) else {"base": "reg_base"}
        return _math.Scalars(0.0, math.e, 1.0, base), learnt

    plain = {**pipeline.defaults(_losses.MIN_ENT), "reduction": "none", "bias": o["bias"],
             "chunk_size": o["chunk_size"], "softcap": o["softcap"],
             "class_group": o["class_group"], "class_axis": o["class_axis"]}
    return _prepare(_losses.MIN_ENT, hidden, classifier, dummy, plain, scalars)


def linear_entropy(hidden: Any, classifier: Any, /, *, bias: Any = None, base: Any = math.e,
                   chunk_size: int | None = None, softcap: float | None = None,
                   class_group: Any = None, class_axis: str | None = None) -> Any:
    """Entropy of ``softmax(hidden @ classifier.T + bias)`` per position, in base
    ``base``, without building the logits (the entropy bonus of RL fine-tuning).

    Differentiable with respect to ``hidden``, ``classifier``, ``bias`` and a 0-d array
    ``base`` through torch autograd and ``jax.grad``, and explicitly with
    `linear_value_and_grad` (the gradient of the sum).

    Args:
        hidden: floating array ``(..., H)``, the features last.
        classifier: ``(C, H)``, torch's ``nn.Linear`` weight layout.
        bias: ``(C,)`` or None.
        base: the logarithm base, > 0 and != 1.
        chunk_size: rows of logits per chunk; ``None``: as many as keep the two
            logits-sized buffers of a chunk within 64 MiB.
        softcap: cap the logits first, as `linear_cross_entropy` does; ``None``: no cap.
        class_group: the classifier's rows (and the bias's) are this process's slice of
            the classes, over this ``torch.distributed`` process group, as for
            `linear_cross_entropy`; a DTensor classifier placed ``Shard(0)`` gives it.
        class_axis: the same over a JAX mesh axis, inside ``shard_map``.

    Returns:
        The entropy per position, ``hidden.shape[:-1]``, in the hidden states' dtype.

    Examples:
        A zero classifier gives uniform logits over 4 classes, 2 bits:

        >>> import numpy as np, entroloss as el
        >>> print(el.linear_entropy(np.ones((2, 3)), np.zeros((4, 3)), base=2))
        [2. 2.]
    """
    call = _prepare_entropy((hidden, classifier), dict(
        bias=bias, base=base, chunk_size=chunk_size, softcap=softcap,
        class_group=class_group, class_axis=class_axis))
    return _result(call, _adapter(hidden).loss(call))


PUBLIC[linear_entropy] = _prepare_entropy


# --- explicit gradients -------------------------------------------------------------------


def linear_value_and_grad(loss_fn: Callable[..., Any], hidden: Any, classifier: Any, /,
                          *target: Any, **options: Any) -> tuple[Any, dict]:
    """The loss and its hand-derived gradients, on any array namespace (how NumPy and CuPy
    users train a linear head).

    With ``reduction="none"`` (and for `linear_entropy`) the gradients are those of the
    sum over the positions.

    Args:
        loss_fn: one of the ``linear_*`` functions.
        hidden: as for ``loss_fn``.
        classifier: as for ``loss_fn``.
        *target: the target (none for `linear_entropy`).
        **options: ``loss_fn``'s keyword arguments.

    Returns:
        ``(loss, grads)`` with ``grads["hidden"]``, ``grads["classifier"]`` and
        ``grads["bias"]`` (when a bias is given) in their inputs' shapes and dtypes, and
        ``grads[name]`` for every weight or base passed as a 0-d array.

    Examples:
        The classifier's gradient is ``(p - onehot(y))`` times the hidden states:

        >>> import numpy as np, entroloss as el
        >>> loss, grads = el.linear_value_and_grad(
        ...     el.linear_cross_entropy, np.ones((1, 2)), np.zeros((4, 2)), np.array([1]))
        >>> print(grads["classifier"])
        [[ 0.25  0.25]
         [-0.75 -0.75]
         [ 0.25  0.25]
         [ 0.25  0.25]]
    """
    prepare = PUBLIC.get(loss_fn) if callable(loss_fn) else None
    if prepare is None:
        names = ", ".join(f.__name__ for f in PUBLIC)
        raise TypeError(f"loss_fn must be one of entroloss's linear-head losses ({names}), "
                        f"got {loss_fn!r}")
    call = prepare((hidden, classifier, *target), options)
    value, grads = _adapter(hidden).value_and_grad(call)
    xp = call.xp
    out = {"hidden": xp.reshape(grads.hidden, tuple(hidden.shape)),
           "classifier": grads.classifier}
    if call.head.bias is not None:
        out["bias"] = grads.bias
    for name, slot in call.learnt.items():
        out[name] = xp.astype(getattr(grads.scalars, slot), getattr(call.scalars, slot).dtype)
    return _result(call, value), out
