"""What the checks and the adapters ask of an array: which library it belongs to, its
namespace, its device, whether its values can be read now. Cheap answers first.

Which library an array belongs to is told in one place, ``_math/arrays.py`` (the math
needs the device and writeability too, and imports nothing above itself); every
question here starts from its :func:`library`.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat as compat

from ._math.arrays import device, is_writeable, library

__all__ = ["library", "library_name", "namespace", "device", "is_writeable", "is_lazy",
           "is_concrete", "on_host", "bounds", "is_dtype"]


def library_name(x: Any) -> str:
    """The library of ``x`` as a message names it: the module its type comes from where
    :func:`library` does not know it (array_api_strict, dask, ...)."""
    return library(x) or type(x).__module__.split(".")[0]


def namespace(x: Any) -> Any:
    """The array-API namespace of ``x`` (array-api-compat's, where it wraps the library);
    a ``TypeError`` for anything that is not an array."""
    which = library(x)
    if which == "torch":
        import array_api_compat.torch as xp

        return xp
    if which == "jax":
        return sys.modules["jax"].numpy
    return compat.array_namespace(x)


def is_lazy(x: Any) -> bool:
    return library(x) is None and compat.is_lazy_array(x)


def is_concrete(x: Any) -> bool:
    """False for arrays whose values cannot be read now: JAX tracers (inside ``jax.jit``,
    ``jax.grad``, ``jax.vmap``), tensors inside ``torch.compile``, dask arrays."""
    which = library(x)
    if which == "jax":
        return not isinstance(x, sys.modules["jax"].core.Tracer)
    if which == "torch":
        return not sys.modules["torch"].compiler.is_compiling()
    return not is_lazy(x)


def on_host(x: Any) -> bool:
    """Whether reading ``x``'s values costs no device-to-host copy and no wait for a
    device queue: NumPy and array-api-strict arrays, torch CPU tensors, JAX CPU arrays."""
    which = library(x)
    if which == "torch":
        return x.device.type == "cpu"
    if which == "jax":
        devices = getattr(x, "devices", None)
        return devices is not None and all(d.platform == "cpu" for d in devices())
    if which == "numpy":
        return True
    return compat.is_array_api_strict_namespace(compat.array_namespace(x))


def bounds(x: Any) -> tuple[Any, Any]:
    """The least and the largest entry of an integer array, as 0-d arrays (one pass where
    the library has a fused min-max)."""
    which = library(x)
    if which == "torch":
        return tuple(sys.modules["torch"].aminmax(x))
    if which == "numpy":
        return x.min(), x.max()
    xp = namespace(x)
    return xp.min(x), xp.max(x)


def is_dtype(xp: Any, x: Any, kind: str) -> bool:
    """``xp.isdtype(x.dtype, kind)`` for ``kind`` "real floating" or "integral", read off
    torch's and NumPy's dtypes directly where the namespace's own test is a Python call."""
    dtype = x.dtype
    which = library(x)
    if which == "torch":
        torch = sys.modules["torch"]
        if kind == "real floating":
            return dtype.is_floating_point
        return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    if which == "numpy":
        return dtype.kind in ("f" if kind == "real floating" else "iu")
    return xp.isdtype(dtype, kind)
