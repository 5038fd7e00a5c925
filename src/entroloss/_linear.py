"""The linear-head losses: from hidden states and a classifier to the loss, without the
whole logits tensor (``docs/linear.md``).

One public function per entry of the registry, generated here: ``linear_<loss>(hidden,
classifier, target, /, *, bias=None, <the plain loss's options>, chunk_size=None)``, and
``linear_entropy``. The arguments are checked as the plain loss checks them (the same
``_validate`` rules, against the logits' shape ``hidden.shape[:-1] + (C,)``), then the
hidden states' adapter runs ``_math.linear``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

from . import _api, _arrays, _losses, _math
from . import _validate as check
from ._losses import LossDef
from ._math import linear

__all__ = ["linear_cross_entropy", "linear_min_ent", "linear_mix_ent", "linear_adaptive_ce",
           "linear_focal", "linear_entropy", "linear_value_and_grad"]


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


def _static_options(definition: LossDef, o: dict) -> dict:
    """The options that are plain Python values, checked as the plain loss checks them."""
    gamma, eps = _api._own_options(definition, o)
    softcap, z_loss = check.logit_options(o["softcap"], o["z_loss"])
    check.check_validate(o["validate"])
    return dict(gamma=gamma, eps=eps, softcap=softcap, z_loss=z_loss,
                reduction=check.check_reduction(o["reduction"]),
                chunk_size=check.check_chunk_size(o["chunk_size"]),
                ignore_index=check.check_ignore_index(o["ignore_index"]),
                label_smoothing=check.real_option("label_smoothing", o["label_smoothing"],
                                                  low=0.0, high=1.0, what="in [0, 1]"))


def _prepare(definition: LossDef, hidden: Any, classifier: Any, target: Any, o: dict,
             scalars: Callable | None = None) -> LinearCall:
    """Check every argument before any work, then the spec of logits ``(N, C)``.
    ``scalars(xp, hidden, validate)`` overrides how the four scalars are read."""
    static = _static_options(definition, o)
    xp = _hidden_namespace(hidden)
    head = _head(xp, hidden, classifier, o["bias"])
    num_classes = head.classifier.shape[0]
    target = check.same_library(xp, hidden, "target", target)
    soft = _target_kind(xp, hidden, target, num_classes)
    ignore_index = static["ignore_index"]
    if soft and ignore_index is not None:
        raise ValueError("ignore_index applies to class-index targets only, not to soft targets")
    if not soft and ignore_index is not None:
        check.ignore_index_fits(xp, target, ignore_index)
    reads = check.reads_data(check.check_validate(o["validate"]), hidden)  # no device sync
    weight = check.class_weight(xp, hidden, o["weight"], num_classes, reads)
    read = scalars or (lambda xp_, h, v: _api._scalars(xp_, h, definition, o, v))
    values, learnt = read(xp, hidden, reads)
    indices_checked = False
    if reads and check.is_concrete(target):
        if soft:
            check.soft_rows(xp, target, target.ndim - 1)
        else:
            indices_checked = check.class_indices(xp, target, num_classes, ignore_index)
    return _as_rows(xp, definition, static, soft, indices_checked, hidden, head, target, weight,
                    values, learnt)


def _as_rows(xp: Any, definition: LossDef, static: dict, soft: bool, indices_checked: bool,
             hidden: Any, head: linear.Head, target: Any, weight: Any, values: Any,
             learnt: dict) -> LinearCall:
    positions = tuple(hidden.shape[:-1])
    rows, classes = math.prod(positions), head.classifier.shape[0]
    chunk_size = static["chunk_size"]
    if chunk_size is None:
        itemsize = 8 if _math.compute_dtype(xp, hidden.dtype) == xp.float64 else 4
        chunk_size = linear.default_chunk_size(classes, itemsize)
    spec = _math.Spec(axis=1, soft=soft, reduction=static["reduction"], gamma=static["gamma"],
                      regularizer=definition.regularizer, eps=static["eps"],
                      label_smoothing=static["label_smoothing"],
                      ignore_index=static["ignore_index"], indices_checked=indices_checked,
                      chunk_size=chunk_size, softcap=static["softcap"], z_loss=static["z_loss"])
    target = xp.reshape(target, (rows, classes) if soft else (rows,))
    keep = None
    if check.is_concrete(target) and _arrays.library(hidden) != "jax":
        keep = linear.kept_rows(xp, spec, target)
    return LinearCall(xp, spec, xp.reshape(hidden, (rows, hidden.shape[-1])), head, target,
                      weight, values, learnt, positions, keep)


def _adapter(hidden: Any) -> Any:
    from entroloss import backends

    return backends.adapter_for(hidden, linear=True)


def _result(call: LinearCall, value: Any) -> Any:
    return call.xp.reshape(value, call.positions) if call.spec.reduction == "none" else value


# --- the public functions, one per entry of the registry ----------------------------------

_PUBLIC: dict = {}  # public function -> its prepare(positional arguments, options)

_DOC = """The linear-head form of `{name}`: the loss of ``hidden @ classifier.T + bias``,
    without ever building those logits.

    The logits are formed ``chunk_size`` rows at a time, in float32 or wider (float16 and
    bfloat16 inputs are accumulated in float32); each chunk's loss and its gradient are
    evaluated by the same math as `{name}`, the gradient multiplied into those of
    ``hidden``, ``classifier`` and ``bias``, and the chunk dropped.

    Args:
      hidden: floating array ``(..., H)``, the features last.
      classifier: ``(C, H)``, torch's ``nn.Linear`` weight layout; the hidden states'
        library, device and dtype.
      target: class indices of shape ``hidden.shape[:-1]``, or probabilities
        ``hidden.shape[:-1] + (C,)`` (differentiated by torch autograd and ``jax.grad``,
        as in the plain losses).
      bias: ``(C,)`` or None.
      chunk_size: rows of logits per chunk; ``None`` takes as many as fit in 64 MiB in
        the compute dtype (``entroloss._math.linear.LOGITS_BUDGET_BYTES``), at least one.
      The other options are `{name}`'s (the class axis is the last one, so there is no
      ``axis``). Positions whose class is ``ignore_index`` are left out of the matmuls
      where the target can be read (NumPy, CuPy, torch); under ``jax.jit`` and on
      array-api-strict they are computed and contribute 0.

    Returns:
      The loss in the hidden states' library, device and dtype; shape ``()`` or, with
      ``reduction="none"``, ``hidden.shape[:-1]``.

    Gradients: torch autograd and ``jax.grad`` reach ``hidden``, ``classifier``,
    ``bias`` and every weight or base passed as a 0-d array; `linear_value_and_grad`
    gives them explicitly (NumPy, CuPy). Example::

      >>> import numpy as np, entroloss as el
      >>> hidden, classifier = np.ones((3, 2)), np.zeros((4, 2))
      >>> print(round(float(el.linear_{name}(hidden, classifier, np.array([0, 1, 3]))), 4))
      {example}
"""


def _signature(definition: LossDef) -> tuple:
    """The plain loss's keywords less ``axis``, with ``bias`` first."""
    plain = getattr(_api, definition.name)
    defaults = {k: v for k, v in _api._PUBLIC[plain].defaults.items() if k != "axis"}
    keyword = inspect.Parameter.KEYWORD_ONLY
    positional = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY)
                  for n in ("hidden", "classifier", "target")]
    params = [inspect.Parameter("bias", keyword, default=None)]
    params += [inspect.Parameter(n, keyword, default=d) for n, d in defaults.items()]
    return inspect.Signature(positional + params), {"bias": None, **defaults}


def _make(definition: LossDef, example: str) -> Callable:
    signature, defaults = _signature(definition)
    name = f"linear_{definition.name}"

    def prepare(args: tuple, options: dict) -> LinearCall:
        if len(args) != 3:
            raise TypeError(f"{name}() takes hidden, classifier and target, got {len(args)} "
                            f"positional argument(s)")
        return _prepare(definition, *args, _options(name, defaults, options))

    def loss(hidden: Any, classifier: Any, target: Any, /, **options: Any) -> Any:
        call = prepare((hidden, classifier, target), options)
        return _result(call, _adapter(hidden).loss(call))

    loss.__name__ = loss.__qualname__ = name
    loss.__code__ = loss.__code__.replace(co_name=name)
    loss.__signature__ = signature  # type: ignore[attr-defined]
    loss.__doc__ = _DOC.format(name=definition.name, example=example)
    _PUBLIC[loss] = prepare
    return loss


def _options(name: str, defaults: dict, given: dict) -> dict:
    unknown = given.keys() - defaults.keys()
    if unknown:
        raise TypeError(f"{name}() got an unexpected keyword argument {min(unknown)!r}")
    return {**defaults, **given}


# uniform logits over 4 classes (a zero classifier): ln 4 and the like, as the plain losses
linear_cross_entropy = _make(_losses.CROSS_ENTROPY, "1.3863")
linear_min_ent = _make(_losses.MIN_ENT, "2.7726")
linear_mix_ent = _make(_losses.MIX_ENT, "11.7479")
linear_adaptive_ce = _make(_losses.ADAPTIVE_CE, "1.0397")
linear_focal = _make(_losses.FOCAL, "0.7798")


# --- the entropy: MIN-ENT's regularizer alone, per position ---------------------------------

_ENTROPY_DEFAULTS = {"bias": None, "base": math.e, "chunk_size": None, "softcap": None}


def _prepare_entropy(args: tuple, options: dict) -> LinearCall:
    """``linear_entropy`` is the linear-head MIN-ENT with ``ce_weight=0``, weight 1 on the
    entropy and reduction "none": the entropy's value and gradient are defined once, in
    ``_math.terms``; the target (class 0 everywhere) is then never read for a gradient."""
    if len(args) != 2:
        raise TypeError(f"linear_entropy() takes hidden and classifier, got {len(args)} "
                        f"positional argument(s)")
    o = _options("linear_entropy", _ENTROPY_DEFAULTS, options)
    hidden, classifier = args
    xp = _hidden_namespace(hidden)
    where = _arrays.device(hidden)
    dummy = xp.zeros(tuple(hidden.shape[:-1]), dtype=xp.int32, device=where)

    def scalars(xp_: Any, h: Any, validate: bool) -> tuple:
        base = check.scalar_param(xp_, h, "base", o["base"], base=True, data_checks=True,
                                  any_base=True)
        learnt = {} if isinstance(base, float) else {"base": "reg_base"}
        return _math.Scalars(0.0, math.e, 1.0, base), learnt

    plain = dict(weight=None, ignore_index=None, label_smoothing=0.0, reduction="none",
                 validate=True, bias=o["bias"], chunk_size=o["chunk_size"],
                 softcap=o["softcap"], z_loss=0.0)
    return _prepare(_losses.MIN_ENT, hidden, classifier, dummy, plain, scalars)


def linear_entropy(hidden: Any, classifier: Any, /, *, bias: Any = None, base: Any = math.e,
                   chunk_size: int | None = None, softcap: float | None = None) -> Any:
    """Entropy of ``softmax(hidden @ classifier.T + bias)`` per position, in base
    ``base``, without building the logits (the entropy bonus of RL fine-tuning).

    Shapes as in `linear_cross_entropy`; returns ``hidden.shape[:-1]`` in the hidden
    states' dtype. Differentiable with respect to ``hidden``, ``classifier``, ``bias``
    and a 0-d array ``base`` (> 0, != 1) through torch autograd and ``jax.grad``, and
    explicitly with `linear_value_and_grad` (the gradient of the sum). ``softcap`` caps
    the logits first, as in `linear_cross_entropy`.

    Example (a zero classifier: uniform over 4 classes, 2 bits)::

      >>> import numpy as np, entroloss as el
      >>> print(el.linear_entropy(np.ones((2, 3)), np.zeros((4, 3)), base=2))
      [2. 2.]
    """
    call = _prepare_entropy((hidden, classifier), dict(bias=bias, base=base,
                                                        chunk_size=chunk_size, softcap=softcap))
    return _result(call, _adapter(hidden).loss(call))


_PUBLIC[linear_entropy] = _prepare_entropy


# --- explicit gradients -------------------------------------------------------------------


def linear_value_and_grad(loss_fn: Callable[..., Any], hidden: Any, classifier: Any, /,
                          *target: Any, **options: Any) -> tuple[Any, dict]:
    """The loss and its hand-derived gradients, on any array namespace (how NumPy and CuPy
    users train a linear head).

    ``loss_fn`` is one of the ``linear_*`` functions, followed by its own positional
    arguments (``hidden, classifier, target``; ``hidden, classifier`` for
    `linear_entropy`) and keywords. Returns ``(loss, grads)`` with ``grads["hidden"]``,
    ``grads["classifier"]``, ``grads["bias"]`` (when a bias is given) in their inputs'
    shapes and dtypes, and ``grads[name]`` for every weight or base passed as a 0-d array.
    With ``reduction="none"`` (and for `linear_entropy`) the gradients are those of the
    sum over the positions.

    Example::

      >>> import numpy as np, entroloss as el
      >>> loss, grads = el.linear_value_and_grad(
      ...     el.linear_cross_entropy, np.ones((1, 2)), np.zeros((4, 2)), np.array([1]))
      >>> print(grads["classifier"])  # (p - onehot(y)) outer hidden
      [[ 0.25  0.25]
       [-0.75 -0.75]
       [ 0.25  0.25]
       [ 0.25  0.25]]
    """
    prepare = _PUBLIC.get(loss_fn) if callable(loss_fn) else None
    if prepare is None:
        names = ", ".join(f.__name__ for f in _PUBLIC)
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
