"""Adapters that attach the shared forward/backward of ``entroloss._math`` to each
framework's autograd, and the libraries' native kernel tables.

The adapter is chosen by the type of the logits (``entroloss._arrays``, which never
imports a framework); an adapter module imports its framework only when it is first
used, which is only ever with that framework's arrays in hand.

Each adapter offers ``loss(xp, spec, logits, target, weight, scalars)``. NumPy, CuPy and
array-api-strict have no autograd and share :mod:`entroloss.backends.explicit`, whose
``value_and_grad`` is also the explicit-gradient path of every other backend.
"""

from __future__ import annotations

import importlib
from typing import Any

from entroloss import _arrays
from entroloss._math import GENERIC, Kernels
from entroloss._math.primitives import learn_dtypes

# The native kernel tables, by the array-api-compat namespace they serve: module of this
# package and the name of its table. Every other namespace runs the generic definitions.
KERNEL_TABLES = {
    "array_api_compat.numpy": ("numpy_kernels", "KERNELS"),
    "array_api_compat.torch": ("torch_kernels", "KERNELS"),
}
_loaded: dict[str, Kernels] = {}


def kernels_for(xp: Any) -> Kernels:
    """The kernel table of namespace ``xp``, loaded once per namespace."""
    name = xp.__name__
    table = _loaded.get(name)
    if table is None:
        where = KERNEL_TABLES.get(name)
        table = GENERIC if where is None else _load_table(*where)
        learn_dtypes(xp)
        _loaded[name] = table
    return table


def _load_table(module: str, attribute: str) -> Kernels:
    table = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    if not isinstance(table, Kernels):
        raise TypeError(f"{module}.{attribute} must be an entroloss._math.Kernels, got {type(table)}")
    return table


def adapter_for(x: Any, *, linear: bool = False) -> Any:
    """The adapter of ``x``'s library: of the plain losses (``x`` the logits), or with
    ``linear`` of the linear-head losses (``x`` the hidden states)."""
    # ``from . import`` (not importlib.import_module): torch.compile traces through it
    which = _arrays.library(x)
    if which == "torch":
        from . import torch as torch_plain, torch_linear
        return torch_linear if linear else torch_plain
    if which == "jax":
        from . import jax as jax_plain, jax_linear
        return jax_linear if linear else jax_plain
    from . import explicit, explicit_linear
    return explicit_linear if linear else explicit
