"""entroloss: classification losses written once against the Python array API standard.

The losses are listed once, in the registry ``entroloss._losses.LOSSES``; each entry gives
a function ``entroloss.<name>`` and its linear-head form ``entroloss.linear_<name>``,
generated at import. They run on NumPy, CuPy, PyTorch, JAX and array-api-strict alike; the
backend is chosen by the type of the logits, and no framework is imported here.
"""

from typing import Any

from . import _api, _linear
from ._api import denominator, entropy, log_softmax, softmax, value_and_grad
from ._linear import linear_entropy, linear_value_and_grad
from ._losses import LOSSES as _LOSSES
from ._token_stats import TokenStats, linear_token_stats, token_stats

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)

LOSS_NAMES: tuple[str, ...] = tuple(d.name for d in _LOSSES)  # the losses, in registry order

for _d in _LOSSES:
    globals()[_d.name] = getattr(_api, _d.name)
    globals()[f"linear_{_d.name}"] = getattr(_linear, f"linear_{_d.name}")

__all__ = [
    "LOSS_NAMES", "TokenStats", "denominator", "entropy", "linear_entropy", "linear_token_stats",
    "linear_value_and_grad", "log_softmax", "softmax", "token_stats", "value_and_grad",
]
__all__ += [*LOSS_NAMES, *(f"linear_{name}" for name in LOSS_NAMES)]  # the registry's


def __getattr__(name: str) -> Any:
    """The generated losses are set above; this tells type checkers that ``entroloss.<loss>``
    exists without a hand list of the names."""
    raise AttributeError(f"module 'entroloss' has no attribute {name!r}")
