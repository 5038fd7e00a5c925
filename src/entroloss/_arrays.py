"""Which library an array belongs to, its namespace and its device: cheap answers first.

array-api-compat answers every question for every library, through ``functools.lru_cache``
helpers; ``torch.compile`` warns about each of those it traces, and each costs a little on
every call. The libraries entroloss has adapters for are recognised here by ``isinstance``
against the modules already imported (``sys.modules``: nothing is imported here), and
everything else goes to array-api-compat.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat as compat

__all__ = ["library", "namespace", "device", "is_writeable", "is_lazy", "on_host", "bounds",
           "is_dtype"]


def library(x: Any) -> str | None:
    """"torch", "jax" or "numpy" for those libraries' arrays, else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(x, (numpy.ndarray, numpy.generic)):
        return "numpy"
    return None


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


def device(x: Any) -> Any:
    which = library(x)
    if which == "torch":
        return x.device
    if which == "numpy":
        return "cpu"  # array-api-compat's answer for every NumPy array
    return compat.device(x)


def is_writeable(x: Any) -> bool:
    which = library(x)
    if which in ("torch", "numpy"):
        return which == "torch" or x.flags.writeable
    return compat.is_writeable_array(x)


def is_lazy(x: Any) -> bool:
    return library(x) is None and compat.is_lazy_array(x)


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
