"""The bad-input rules, checked before any loss work (docs/reliability.md lists them).

Shape, dtype and option checks always run. Checks that read the data (class-index range,
soft-target rows, class-weight and array-parameter values) run when ``validate=True`` and
the arrays are concrete; under ``jax.jit`` tracing, inside ``torch.compile`` (or for any
lazy array) they cannot: ``validate="eager"`` then raises (:func:`cannot_read`), and
otherwise a class weight or parameter that breaks its rule is made NaN here
(:func:`value_rule`) and a bad target position NaN by the math (``_math/target.py``).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Callable

from . import _arrays
from ._arrays import is_concrete
from ._math.target import soft_row_tolerance

REDUCTIONS = ("none", "mean", "sum")


def namespace_of_logits(logits: Any) -> Any:
    try:
        xp = _arrays.namespace(logits)
    except TypeError:
        raise TypeError(
            f"logits must be an array of a library supporting the array API "
            f"(numpy, cupy, torch, jax, array_api_strict), got {type(logits).__name__}"
        ) from None
    if not _arrays.is_dtype(xp, logits, "real floating"):
        raise TypeError(f"logits must have a real floating-point dtype, got {logits.dtype}")
    if logits.ndim == 0:
        raise ValueError("logits must have at least 1 dimension (the class axis), got a 0-d array")
    return xp


def same_library(xp: Any, logits: Any, name: str, value: Any) -> Any:
    """``value`` as an array of the logits' library, on the logits' device.

    JAX takes NumPy arrays for JAX logits, as ``jax.jit`` and ``jnp`` do (they become JAX
    arrays on the logits' device); every other library must be given its own arrays, as
    torch itself insists."""
    if _arrays.library(logits) == "jax" and _arrays.library(value) == "numpy":
        value = _to_jax(logits, value)
    try:
        other = _arrays.namespace(value)
    except TypeError:
        other = None
    if other is not xp:
        raise TypeError(
            f"{name} must be an array from the same library as logits ({_arrays.library_name(logits)}), "
            f"got {type(value).__module__}.{type(value).__name__}"
        )
    devices = _arrays.device(value), _arrays.device(logits)
    # a JAX tracer has no device (None): placement is then JAX's business
    if None not in devices and devices[0] != devices[1]:
        raise ValueError(
            f"{name} is on device {_arrays.device(value)} but logits are on "
            f"{_arrays.device(logits)}; move them to one device"
        )
    return value


def _to_jax(logits: Any, value: Any) -> Any:
    jax = sys.modules["jax"]
    array = jax.numpy.asarray(value)
    device = _arrays.device(logits) if is_concrete(logits) else None
    return array if device is None else jax.device_put(array, device)


def normalize_axis(axis: Any, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    axis = int(axis)  # a NumPy integer, say
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for logits with {ndim} dimension(s)")
    return axis % ndim


def real_option(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, what: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{name} must be finite and {what}, got {value}")
    return value


def logit_options(softcap: Any, z_loss: Any) -> tuple[float | None, float]:
    """``(softcap, z_loss)``, static Python numbers (part of the spec, so not arrays):
    the cap ``None`` (off) or finite and > 0, the z-loss's weight finite and >= 0."""
    if softcap is not None:
        softcap = real_option("softcap", softcap, low=0.0, low_open=True,
                              what="> 0 (or None: no cap)")
    return softcap, real_option("z_loss", z_loss, low=0.0, what=">= 0")


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be a positive int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    return int(chunk_size)


def check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        hint = ""
        if hasattr(ignore_index, "shape"):  # an array, e.g. a traced argument under jax.jit
            hint = (" (it is static: under jax.jit pass it in static_argnames or bind it with "
                    "functools.partial)")
        raise TypeError(f"ignore_index must be a Python int or None, got "
                        f"{type(ignore_index).__name__}{hint}")
    return int(ignore_index)


def ignore_index_fits(xp: Any, target: Any, ignore_index: int) -> None:
    # e.g. -100 in a uint8 target: no entry can equal it, and the labels were likely
    # wrapped around when cast (-100 -> 156), so this is refused rather than ignored
    info = xp.iinfo(target.dtype)
    if not info.min <= ignore_index <= info.max:
        raise ValueError(
            f"ignore_index={ignore_index} cannot occur in a target of dtype {target.dtype} "
            f"(range [{info.min}, {info.max}]); use a signed integer target"
        )


def check_validate(validate: Any) -> Any:
    if validate is True or validate is False or validate == "eager":
        return validate
    raise TypeError(f"validate must be True, False or 'eager', got {validate!r}")


def reads_data(validate: Any, x: Any, *more: Any) -> Any:
    """Whether the checks that read the data run for ``x`` (the logits or hidden states)
    and ``more`` (the target): with ``validate=True`` where that costs no device-to-host
    sync (an array on the host, not a traced or lazy one); with ``validate="eager"``
    wherever the values exist, on an accelerator too, and where they do not (tracing) it
    is an error: a check asked for must not pass silently. Falsy, True, or "eager" (which
    the checks below pass on, so that a value they cannot read raises too)."""
    if validate is False:
        return False
    for array in (x, *more):
        if not is_concrete(array):
            if validate == "eager":
                raise cannot_read(array)
            return False
    return "eager" if validate == "eager" else _arrays.on_host(x)


def cannot_read(x: Any) -> ValueError:
    """The error of ``validate="eager"`` where the data has no values yet (tracing)."""
    where, how = {
        "jax": ("under jax.jit (or another JAX transformation)",
                "; to check traced data use entroloss.backends.jax_checks (checkify)"),
        "torch": ("inside torch.compile",
                  "; to check the data call the loss outside the compiled region"),
    }.get(_arrays.library(x) or "", ("for a lazy array", ""))
    return ValueError(
        f"validate='eager' cannot check the data {where}: its values cannot be read while "
        f"tracing. Pass validate=True (the data checks are skipped while tracing and a class "
        f"index out of range, a soft-target row that is no distribution, a negative class "
        f"weight or a bad base gives NaN){how}")


def _readable(x: Any, reads: Any) -> bool:
    """Whether to check ``x``'s values: the checks run and ``x`` can be read now; under
    ``validate="eager"`` an ``x`` that cannot be read is an error."""
    if not reads:
        return False
    if is_concrete(x):
        return True
    if reads == "eager":
        raise cannot_read(x)
    return False


def value_rule(xp: Any, x: Any, ok: Any, reads: Any, message: Callable[[], str]) -> Any:
    """``x`` (class weights or a parameter given as an array) against its rule ``ok``, a
    boolean per entry: where the checks run and ``ok`` can be read, a ``ValueError``
    with ``message()`` if an entry fails (formatted only then: a tensor's repr cannot be
    traced by ``torch.compile``); where not (tracing, ``validate=False``, an
    accelerator under ``validate=True``), the entries that fail made NaN, without reading
    ``ok`` (no host sync, traceable), so that the loss says so instead of giving a number.
    Multiplied, not selected, so that where autograd differentiates it ``x``'s own
    gradient is NaN too, not 0 (and a good ``x`` times 1 is ``x`` exactly)."""
    if _readable(x, reads):
        every = xp.all(ok)
        if _readable(every, reads):
            if not bool(every):
                raise ValueError(message())
            return x
    one = xp.ones_like(ok, dtype=x.dtype)
    # (asarray: NumPy's 0-d product is a NumPy scalar, which would pass for a Python float)
    return xp.asarray(x * xp.where(ok, one, one * math.nan))


def _fails(condition: Any, reads: Any = True) -> bool:
    """True where a 0-d boolean check is readable and false. Inside ``jax.jit`` even
    operations on concrete arrays are staged, so the result is tested, not the inputs
    (and under ``validate="eager"`` an unreadable result raises)."""
    return _readable(condition, reads) and not bool(condition)


def scalar_param(xp: Any, logits: Any, name: str, value: Any, *, base: bool, data_checks: bool,
                 any_base: bool = False) -> Any:
    """A weight or base: a real Python number, or a 0-d floating array of the logits'
    library (then it is differentiable). A loss's base must be > 1: in (0, 1) ``ln b < 0``
    turns its term into its own negative. ``any_base`` allows every valid logarithm base
    (> 0, != 1), for the entropy as a measurement."""
    rule = "> 0 and != 1" if any_base else "> 1"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number or a 0-d array, got bool")
    if isinstance(value, numbers.Real):
        value = float(value)
        if base and not (_valid_base(value, any_base) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number {rule}, got {value}")
        if not base and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        return value
    value = same_library(xp, logits, name, value)
    if value.ndim != 0:
        raise ValueError(f"{name} must be a 0-d array, got shape {tuple(value.shape)}")
    if not _arrays.is_dtype(xp, value, "real floating"):
        raise TypeError(f"{name} must have a real floating-point dtype, got {value.dtype}")
    if not base:
        return value
    # a base of 0 would give a loss of 0 (1 / ln 0 = -0) and 1 an infinite one
    return value_rule(xp, value, _valid_base(value, any_base) & xp.isfinite(value), data_checks,
                      lambda: f"{name} must be a finite number {rule}, got {value!r}")


def _valid_base(value: Any, any_base: bool) -> Any:
    return (value > 0) & (value != 1) if any_base else value > 1


def class_weight(xp: Any, logits: Any, weight: Any, num_classes: int, data_checks: bool) -> Any:
    if weight is None:
        return None
    weight = same_library(xp, logits, "weight", weight)
    if not _arrays.is_dtype(xp, weight, "real floating"):
        raise TypeError(f"weight must have a real floating-point dtype, got {weight.dtype}")
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},), one entry per class, got {tuple(weight.shape)}"
        )
    # not read, a negative weight becomes NaN, as a NaN weight: so the positions whose
    # target puts mass on its class (all, for a soft or smoothed target), and the mean
    return value_rule(xp, weight, weight >= 0, data_checks,
                      lambda: "weight must be non-negative (and not NaN)")


def target_kind(xp: Any, logits: Any, target: Any, axis: int) -> bool:
    """Check the target's dtype and shape (the target of the logits' library); return True
    for a soft (probability) target."""
    indices_shape = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1:])
    if _arrays.is_dtype(xp, target, "integral"):
        if tuple(target.shape) != indices_shape:
            raise ValueError(
                f"target of class indices must have shape {indices_shape} (the logits' shape "
                f"{tuple(logits.shape)} without the class axis {axis}), got "
                f"{tuple(target.shape)}{_shape_hint(logits, target, axis, integral=True)}"
            )
        return False
    if _arrays.is_dtype(xp, target, "real floating"):
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError(
                f"soft target (probabilities) must have the logits' shape "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}"
                f"{_shape_hint(logits, target, axis, integral=False)}"
            )
        return True
    raise TypeError(
        f"target must hold integer class indices or floating-point probabilities, got {target.dtype}"
    )


def _shape_hint(logits: Any, target: Any, axis: int, *, integral: bool) -> str:
    """What the user most likely meant, where a wrong target shape says it clearly."""
    logits_shape, target_shape = tuple(logits.shape), tuple(target.shape)
    if logits.ndim == 1 and target.ndim >= 1:
        return (f"; logits of shape {logits_shape} are one position with {logits_shape[0]} "
                f"classes: for a batch pass logits of shape (N, C)")
    if integral and target_shape == logits_shape:
        return ("; an integer target with the logits' shape looks one-hot: pass it as "
                "floating-point probabilities, or pass class indices")
    if not integral and target_shape == logits_shape[:axis] + logits_shape[axis + 1:]:
        return ("; a floating-point target without the class axis looks like class indices: "
                "class indices must have an integer dtype")
    torch_layout = logits_shape[:1] + logits_shape[2:]
    if logits.ndim > 2 and axis != 1 and integral and target_shape == torch_layout:
        return "; for torch's layout (N, C, d1, ...) pass axis=1"
    return ""


def class_indices(xp: Any, target: Any, num_classes: int, ignore_index: int | None,
                  reads: Any = True) -> bool:
    """Refuse indices outside [0, C) that are not ignore_index; True if the data was read
    (so the loss may skip its own out-of-range handling)."""
    if math.prod(target.shape) == 0:
        return True
    low, high = _arrays.bounds(target)
    if is_concrete(low) and 0 <= int(low) and int(high) < num_classes:
        return True  # the common case: one fused reduction, two reads
    outside = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        outside = outside & (target != ignore_index)
    none_outside = ~xp.any(outside)
    if not _readable(none_outside, reads):
        return False
    if not bool(none_outside):
        # the largest offending index (every offending value is >= the target's minimum)
        bad = int(xp.max(xp.where(outside, target, xp.min(target))))
        allowed = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
        hint = ""
        if ignore_index is None and bool(xp.any(target == -100)):
            hint = "; torch marks ignored positions with -100: pass ignore_index=-100"
        raise ValueError(f"target holds class index {bad}, outside [0, {num_classes}){allowed}{hint}")
    return True


def soft_rows(xp: Any, target: Any, axis: int, reads: Any = True, group: Any = None) -> bool:
    """Refuse a soft target with a negative (or NaN) entry or a row whose sum is off 1 by
    more than :func:`soft_row_tolerance` (the math's rule where the rows are not read);
    True if the rows were read. With ``group`` (a ``_math.ClassSlice``'s collectives) the
    target is this process's slice of the classes, and a row is every slice's."""
    if math.prod(target.shape) == 0:
        return True
    non_negative = xp.all(target >= 0)
    if group is not None:  # a count of the slices with a bad entry
        bad = xp.astype(xp.logical_not(non_negative), xp.float32)
        non_negative = group.sum(xp.reshape(bad, (1,)))[0] == 0
    if not _readable(non_negative, reads):  # staged (inside jax.jit): the math marks them
        return False
    if not bool(non_negative):
        raise ValueError("soft target must be non-negative (and not NaN)")
    tolerance = soft_row_tolerance(xp, target.dtype)
    sums = xp.sum(xp.astype(target, xp.float32 if target.dtype != xp.float64 else xp.float64), axis=axis)
    if group is not None:
        sums = group.sum(sums)
    worst = xp.max(xp.abs(sums - 1))
    if _fails(worst <= tolerance, reads):
        raise ValueError(
            f"soft target rows must sum to 1 along axis {axis} (within {tolerance:.1e}); "
            f"the worst row is off by {float(worst):.3g}"
        )
    return True


def sample_weight(xp: Any, logits: Any, value: Any, positions: tuple, data_checks: Any) -> Any:
    """One weight per position (the logits' shape minus the class axis), floating,
    non-negative and finite (the values read where the data checks run)."""
    if value is None:
        return None
    value = same_library(xp, logits, "sample_weight", value)
    if not _arrays.is_dtype(xp, value, "real floating"):
        raise TypeError(f"sample_weight must have a real floating-point dtype, got {value.dtype}")
    if tuple(value.shape) != positions:
        raise ValueError(f"sample_weight must have shape {positions}, one weight per position "
                         f"(the target's shape for class indices), got {tuple(value.shape)}")
    # where the data cannot be read, a bad weight makes its position NaN (value_rule)
    return value_rule(xp, value, (value >= 0) & xp.isfinite(value), data_checks,
                      lambda: "sample_weight must be non-negative and finite (and not NaN)")


def denominator(xp: Any, logits: Any, value: Any, reduction: str, dtype: Any,
                data_checks: bool) -> Any:
    """What ``reduction="mean"`` divides by, given by the caller: a real number > 0 and
    finite (a Python float then), or a 0-d array of the logits' library (integer or
    floating; returned in ``dtype``, the compute dtype), whose value is read where the data
    checks run. A constant: nothing differentiates it."""
    if value is None:
        return None
    if reduction != "mean":
        raise ValueError(f"denominator applies to reduction='mean' only (it replaces what the "
                         f"mean divides by), got reduction={reduction!r}")
    if isinstance(value, bool):
        raise TypeError("denominator must be a real number or a 0-d array, got bool")
    if isinstance(value, numbers.Real):
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"denominator must be finite and > 0, got {value}")
        return value
    if not hasattr(value, "shape"):
        raise TypeError(f"denominator must be a real number or a 0-d array, got "
                        f"{type(value).__name__}")
    value = same_library(xp, logits, "denominator", value)
    if value.ndim != 0:
        raise ValueError(f"denominator must be a 0-d array (or a number), got shape "
                         f"{tuple(value.shape)}")
    if not (_arrays.is_dtype(xp, value, "real floating") or _arrays.is_dtype(xp, value, "integral")):
        raise TypeError(f"denominator must have a real (integer or floating) dtype, got "
                        f"{value.dtype}")
    value = xp.astype(value, dtype)
    if data_checks and is_concrete(value) and _fails(xp.isfinite(value) & (value > 0)):
        raise ValueError(f"denominator must be finite and > 0, got {value!r}")
    return value
