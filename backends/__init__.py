"""Adapters that attach the shared forward/backward of ``entroloss._math`` to each
framework's autograd.

The adapter is chosen by the type of the logits (array-api-compat's ``is_*_array``, which
never imports a framework); an adapter module imports its framework only when it is first
used, which is only ever with that framework's arrays in hand.

Each adapter offers ``loss(xp, spec, logits, target, weight, params)``. NumPy, CuPy and
array-api-strict have no autograd and share :mod:`entroloss.backends.explicit`, whose
``value_and_grad`` is also the explicit-gradient path of every other backend.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as compat


def adapter_for(logits: Any) -> Any:
    if compat.is_torch_array(logits):
        from . import torch as adapter
    elif compat.is_jax_array(logits):
        from . import jax as adapter
    else:
        from . import explicit as adapter
    return adapter
