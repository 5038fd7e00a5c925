"""The one prepare pipeline of every loss, plain and linear-head: check every argument
before any work, then build the static :class:`_math.Spec` of the call.

A plain loss (:func:`prepare`) reads the logits' shape; a linear head (``_linear.py``)
checks its hidden states and classifier, then runs the same steps against the shape its
logits would have. The static part of a plain call is cached (:func:`prepare_cached`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, NamedTuple

from . import _arrays, _math, _sharded
from . import _validate as check
from ._losses import SLOT_DEFAULTS, SLOTS, LossDef

__all__ = ["COMMON", "Prepared", "prepare", "prepare_cached", "defaults", "with_defaults", "static_options",
           "target_rules", "scalars", "normalization", "read_target", "make_spec", "bound_key",
           "remember_call"]

# The keywords every loss takes beyond its own, with their defaults, annotations (as the
# signatures show them) and documentation (one line each; _docs.py writes the docstrings).
COMMON: dict[str, tuple[Any, str]] = {
    "axis": (-1, "int"),
    "weight": (None, "Array | None"),
    "ignore_index": (None, "int | None"),
    "label_smoothing": (0.0, "float"),
    "reduction": ("mean", "Literal['mean', 'sum', 'none']"),
    "validate": (True, "bool | Literal['eager']"),
    "chunk_size": (None, "int | None"),
    "softcap": (None, "float | None"),
    "z_loss": (0.0, "float"),
    "sample_weight": (None, "Array | None"),
    "denominator": (None, "float | Array | None"),
    "class_group": (None, "Any"),
    "class_axis": (None, "str | None"),
}


class Prepared(NamedTuple):
    """A validated plain call: everything an adapter needs, plus which scalars are arrays."""

    xp: Any
    spec: _math.Spec
    logits: Any
    target: Any
    weight: Any
    scalars: _math.Scalars
    learnt: dict  # public name -> slot, for the weights and bases given as arrays
    sample_weight: Any  # one weight per position, or None
    denominator: Any  # what "mean" divides by, given (a float or a 0-d array), or None


def defaults(definition: LossDef) -> dict:
    """Every keyword of the plain loss with its default."""
    return {**definition.defaults(), **{k: d for k, (d, _) in COMMON.items()}}


def with_defaults(name: str, defaults: dict, given: dict) -> dict:
    """``given`` over ``defaults``; a keyword the function does not take is Python's
    ``TypeError``, naming the function."""
    unknown = given.keys() - defaults.keys()
    if unknown:
        raise TypeError(f"{name}() got an unexpected keyword argument {min(unknown)!r}")
    return {**defaults, **given}


def static_options(definition: LossDef, o: dict) -> dict:
    """The options that are Python values, checked (the loss's own first), as the fields
    of the spec they become."""
    own = {option.name: check.real_option(option.name, o[option.name], low=option.low,
                                          low_open=option.low_open, what=option.rule)
           for option in definition.options}
    softcap, z_loss = check.logit_options(o["softcap"], o["z_loss"])
    check.check_validate(o["validate"])
    regularizer = definition.regularizer
    return dict(
        gamma=own.get("gamma", definition.gamma), eps=own.get("eps", 1e-6),
        regularizer=None if regularizer is None else regularizer.name,
        softcap=softcap, z_loss=z_loss,
        reduction=check.check_reduction(o["reduction"]),
        chunk_size=check.check_chunk_size(o["chunk_size"]),
        ignore_index=check.check_ignore_index(o["ignore_index"]),
        label_smoothing=check.real_option("label_smoothing", o["label_smoothing"], low=0.0,
                                          high=1.0, what="in [0, 1]"))


def target_rules(xp: Any, target: Any, soft: bool, ignore_index: int | None) -> None:
    if soft and ignore_index is not None:
        raise ValueError("ignore_index applies to class-index targets only, not to soft targets")
    if not soft and ignore_index is not None:
        check.ignore_index_fits(xp, target, ignore_index)


def scalars(xp: Any, x: Any, definition: LossDef, o: dict, reads: bool) -> tuple:
    """The four scalars from the loss's public names (checked in slot order), and which
    public names were given as arrays. ``x`` is the array the others must match."""
    by_slot = {s.slot: s for s in definition.parameters}
    values, learnt = [], {}
    for slot in SLOTS:
        scalar = by_slot.get(slot)
        if scalar is None:
            values.append(SLOT_DEFAULTS[slot])
            continue
        value = check.scalar_param(xp, x, scalar.name, o[scalar.name], base=scalar.is_base,
                                   data_checks=reads)
        if scalar.low is not None:
            value = _at_least(xp, scalar.name, value, scalar.low, reads)
        if not isinstance(value, float):
            learnt[scalar.name] = slot
        values.append(value)
    return _math.Scalars(*values), learnt


def normalization(xp: Any, x: Any, o: dict, reduction: str, positions: tuple,
                  reads: bool) -> tuple:
    """``(sample_weight, denominator)``, checked: the weight of each position (``positions``
    its shape) and the mean's divisor given by the call (in the compute dtype of ``x``, the
    array the others must match, where it is an array)."""
    dtype = _math.compute_dtype(xp, x.dtype)
    return (check.sample_weight(xp, x, o["sample_weight"], positions, reads),
            check.denominator(xp, x, o["denominator"], reduction, dtype, reads))


def _at_least(xp: Any, name: str, value: Any, low: float, reads: Any) -> Any:
    message = lambda: f"{name} must be >= {low:g}, got {value!r}"  # noqa: E731
    if isinstance(value, float):
        if value < low:
            raise ValueError(message())
        return value
    return check.value_rule(xp, value, value >= low, reads, message)  # (NaN where not read)


def read_target(xp: Any, target: Any, soft: bool, axis: int, num_classes: int,
                ignore_index: int | None, reads: Any, sliced: bool = False) -> bool:
    """The target's data checks (where ``reads``); True if the target was read (and so
    the math need not mark its bad positions NaN). A soft target's slice of the classes
    (``sliced``) is checked by ``_sharded`` once every process has passed its checks."""
    if not (reads and check.is_concrete(target)):
        return False
    if soft and sliced:
        return False
    if soft:
        return check.soft_rows(xp, target, axis, reads)
    return check.class_indices(xp, target, num_classes, ignore_index, reads)


def make_spec(static: dict, *, axis: int, soft: bool, target_checked: bool,
              chunk_size: int | None = None,
              classes: _math.ClassSlice | None = None) -> _math.Spec:
    fields = {**static, "chunk_size": static["chunk_size"] if chunk_size is None else chunk_size}
    return _math.Spec(axis=axis, soft=soft, target_checked=target_checked, classes=classes,
                      **fields)


def prepare(definition: LossDef, logits: Any, target: Any, o: dict) -> Prepared:
    """Check every argument of a plain loss (its own options first), then build the spec;
    where the classes are sharded over processes, every process raises together."""
    if _sharded.sliced(o):
        return _sharded.prepare(o, logits, lambda: measure(definition, logits, target, o),
                                lambda classes: prepare_call(definition, logits, target, o, classes))
    return prepare_call(definition, logits, target, o)


def measure(definition: LossDef, logits: Any, target: Any, o: dict) -> tuple:
    """A sharded call's local checks: ``(classes of this slice, rows, target)``."""
    static_options(definition, o)
    xp = check.namespace_of_logits(logits)
    axis = check.normalize_axis(o["axis"], logits.ndim)
    if logits.shape[axis] == 0:
        raise ValueError(f"logits have 0 classes along axis {axis}; at least 1 is needed")
    target = check.same_library(xp, logits, "target", target)
    return logits.shape[axis], math.prod(_positions(logits, axis)), target


def prepare_call(definition: LossDef, logits: Any, target: Any, o: dict,
                 classes: _math.ClassSlice | None = None) -> Prepared:
    """:func:`prepare`'s checks and spec, against the count of all classes where
    ``classes`` (this process's slice) is given."""
    static = static_options(definition, o)
    xp = check.namespace_of_logits(logits)
    axis = check.normalize_axis(o["axis"], logits.ndim)
    num_classes = logits.shape[axis] if classes is None else classes.num_classes
    if logits.shape[axis] == 0:
        raise ValueError(f"logits have 0 classes along axis {axis}; at least 1 is needed")
    target = check.same_library(xp, logits, "target", target)
    soft = check.target_kind(xp, logits, target, axis)
    target_rules(xp, target, soft, static["ignore_index"])
    reads = check.reads_data(o["validate"], logits, target)
    weight = check.class_weight(xp, logits, o["weight"], num_classes, reads)
    sample_weight, denominator = normalization(xp, logits, o, static["reduction"],
                                               _positions(logits, axis), reads)
    values, learnt = scalars(xp, logits, definition, o, reads)
    target_checked = read_target(xp, target, soft, axis, num_classes, static["ignore_index"],
                                  reads, classes is not None)
    spec = make_spec(static, axis=axis, soft=soft, target_checked=target_checked,
                     classes=classes)
    return Prepared(xp, spec, logits, target, weight, values, learnt, sample_weight, denominator)


def _positions(logits: Any, axis: int) -> tuple:
    return tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])


# --- the static part of a call, cached ------------------------------------------------------

# What prepare checks and builds from Python values and from the arrays' type, dtype,
# shape and device alone, kept under a key of exactly those: a repeated call (a training
# loop) then runs only the checks that read data. Any option takes part in the key by
# its value, so that a new option needs nothing here.
STATIC_CALLS: dict = {}
STATIC_CALLS_MAX = 256  # cleared when full: shapes that vary without end cannot grow it
_PYTHON_VALUES = frozenset({bool, int, float, str, type(None)})
_ARRAY = object()  # an option given as an array: its checks run on every call


class _Static(NamedTuple):
    """The part of a prepared call its key determines."""

    xp: Any
    spec: _math.Spec
    scalars: _math.Scalars  # rebuilt per call where a weight or base is an array
    reads: bool  # the data checks run (validate and the sync policy)
    arrays: bool  # an option (class weights, a weight or base) is an array


def prepare_cached(definition: LossDef, logits: Any, target: Any, o: dict) -> Prepared:
    """:func:`prepare`, the static part from the cache where this key was seen before."""
    key = _static_key(definition, logits, target, o)
    static = None if key is None else STATIC_CALLS.get(key)
    if static is not None:
        return _bind(definition, static, logits, target, o)
    p = prepare(definition, logits, target, o)
    if key is not None and p.target is target:  # (a converted target is converted each call)
        if len(STATIC_CALLS) >= STATIC_CALLS_MAX:
            STATIC_CALLS.clear()
        arrays = any(part is _ARRAY for part in key)
        reads = check.reads_data(o["validate"], logits, target)
        STATIC_CALLS[key] = _Static(p.xp, p.spec, p.scalars, reads, arrays)
    return p


def _static_key(definition: LossDef, logits: Any, target: Any, o: dict) -> tuple | None:
    """The key of a call's static part; None where it is not cached: an argument that is
    neither an array nor a Python value (its checks will say what is wrong), or inside
    torch.compile, which must not trace a mutation of the cache."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_compiling() or _sharded.sliced(o):
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
    try:
        hash(tuple(key))  # a device or dtype of a library that does not hash them
    except TypeError:
        return None
    return tuple(key)


def _described(x: Any) -> tuple:
    return type(x), x.dtype, tuple(x.shape), _arrays.device(x)


def _bind(definition: LossDef, static: _Static, logits: Any, target: Any, o: dict) -> Prepared:
    """A call whose static part is known: the checks that read its data, in
    :func:`prepare`'s order, and the arrays' own checks."""
    xp, spec, reads = static.xp, static.spec, static.reads
    num_classes = logits.shape[spec.axis]
    weight, values, learnt = o["weight"], static.scalars, {}
    if static.arrays:
        weight = check.class_weight(xp, logits, weight, num_classes, reads)
    # a Python denominator is in the key, but its float is made here (a cheap check)
    sample_weight, denominator = normalization(xp, logits, o, spec.reduction,
                                               _positions(logits, spec.axis), reads)
    if static.arrays:
        values, learnt = scalars(xp, logits, definition, o, reads)
    target_checked = read_target(xp, target, spec.soft, spec.axis, num_classes,
                                  spec.ignore_index, reads)
    if target_checked != spec.target_checked:
        spec = dataclasses.replace(spec, target_checked=target_checked)
    return Prepared(xp, spec, logits, target, weight, values, learnt, sample_weight, denominator)


# --- a repeated call, bound -----------------------------------------------------------------

# A call given only Python options (no class or sample weights, no learnt weights or bases)
# whose adapter can bind it (``bind``): what is left of it per call is the checks that read
# the target's data, and the adapter's bound function. Kept under a key of what the call
# gives, as it gives it (the options it names, not all of them with their defaults): at
# small sizes the Python of a call is its cost, and on a training step that Python also
# evicts the model's own from the CPU's caches (docs/performance.md).
BOUND_CALLS: dict = {}
BOUND_CALLS_MAX = 256
# A key is bound on its BIND_AFTER-th call: binding records the call's ops (a few of its
# own runs), which logits whose shape changes every step (variable-length batches) would
# pay on every step. The suite binds on the first call (tests/conftest.py), so that every
# torch call it makes runs replayed.
BIND_AFTER = 2
_SEEN: dict = {}  # key -> calls seen, unbound
# the array types of the calls bound so far, each with its adapter (the rest never look)
BOUND_TYPES: dict = {}
# The public function looks a call up itself (``_api.py``): BOUND_TYPES, then BOUND_CALLS
# under bound_key, every call, where each Python call is a share of a small training step.


def bound_key(name: str, logits: Any, target: Any, options: dict, adapter: Any) -> tuple | None:
    """The key of a call of loss ``name`` as it is given: the adapter's ``described(name,
    logits, target)`` (the name, the arrays' types, dtypes, shapes and devices) and the
    options (None where one is not a Python value, or an array is not one the adapter
    describes)."""
    try:
        key = adapter.described(name, logits, target)
    except AttributeError:
        return None
    for option, value in options.items():
        kind = type(value)
        if kind not in _PYTHON_VALUES:
            return None
        key += (option, kind, value)  # the type too: True and 1 are checked differently
    return key


def remember_call(definition: LossDef, logits: Any, target: Any, options: dict, o: dict,
                  p: Prepared, adapter: Any) -> Any:
    """Bind a prepared call (``options`` as given, ``o`` with the defaults) for its
    repetitions where it can be: Python options only, the caller's own arrays (nothing
    converted or unwrapped), all classes in one process, an adapter that binds (``bind``;
    ``described``, of the key; ``tracing()``, whether the call is being traced, when a
    bound call does not run: it runs eagerly only). Returns
    the adapter's bound function (``call(logits, target)``: the target's data checks,
    then the loss), or None."""
    bind = getattr(adapter, "bind", None)
    if (bind is None or p.logits is not logits or p.target is not target or p.learnt
            or p.weight is not None or p.sample_weight is not None
            or not isinstance(p.denominator, (float, type(None)))
            or p.spec.classes is not None):
        return None
    key = (None if logits is target or adapter.tracing()
           else bound_key(definition.name, logits, target, options, adapter))
    seen = -1 if key is None else _SEEN.get(key, 0)  # (-1: the adapter refused the key)
    if seen < 0:
        return None
    if seen + 1 < BIND_AFTER:
        _seen(key, seen + 1)
        return None
    xp, spec = p.xp, p.spec
    reads = check.reads_data(o["validate"], logits, target)
    # the target's data checks, as prepare's read_target (the rest is fixed by the key):
    # the bound function runs them first, every call
    check_target: Any = None
    if reads and spec.soft:
        def check_target(target: Any) -> None:
            check.soft_rows(xp, target, spec.axis, reads)
    elif reads:
        num_classes, ignore_index = logits.shape[spec.axis], spec.ignore_index

        def check_target(target: Any) -> None:
            check.class_indices(xp, target, num_classes, ignore_index, reads)
    call = bind(xp, spec, p.logits, p.target, p.scalars, p.denominator, check_target)
    if call is None:  # what bind refuses depends on the key alone: never asked again
        _seen(key, -1)
        return None
    _SEEN.pop(key, None)
    if len(BOUND_CALLS) >= BOUND_CALLS_MAX:
        BOUND_CALLS.clear()
    BOUND_CALLS[key] = call
    BOUND_TYPES[type(logits)] = adapter
    return call


def _seen(key: Any, count: int) -> None:
    if len(_SEEN) >= BOUND_CALLS_MAX and key not in _SEEN:
        _SEEN.clear()
    _SEEN[key] = count
