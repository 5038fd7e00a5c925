"""Which library an array belongs to, and what the math asks of an array: its device and
whether its library writes into arrays in place.

array-api-compat answers every question for every library, through ``functools.lru_cache``
helpers; ``torch.compile`` warns about each of those it traces, and each costs a little on
every call. The libraries entroloss has adapters for are recognised here by ``isinstance``
against the modules already imported (``sys.modules``: nothing is imported here), and
everything else goes to array-api-compat. This is the one place that tells libraries
apart; ``entroloss._arrays`` builds the checks' questions on :func:`library`.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat as compat

__all__ = ["library", "device", "is_writeable", "scatters_rows"]


def library(x: Any) -> str | None:
    """"torch", "jax", "numpy" or "cupy" for those libraries' arrays, else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(x, (numpy.ndarray, numpy.generic)):
        return "numpy"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return None


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


def scatters_rows(x: Any) -> bool:
    """Whether ``x``'s library writes rows back by an index array (``out[index] = rows``):
    NumPy, CuPy and torch; not JAX, array-api-strict or dask."""
    return library(x) in ("numpy", "cupy", "torch") and is_writeable(x)
