"""entroloss: classification losses written once against the Python array API standard.

MIN-ENT, MIX-ENT, the linearly adaptive cross entropy, focal loss and cross entropy, on
NumPy, CuPy, PyTorch, JAX and array-api-strict alike. The backend is chosen by the type
of the logits; no framework is imported here.
"""

from ._api import (
    adaptive_ce,
    cross_entropy,
    entropy,
    focal,
    log_softmax,
    min_ent,
    mix_ent,
    softmax,
    value_and_grad,
)
from ._linear import (
    linear_adaptive_ce,
    linear_cross_entropy,
    linear_entropy,
    linear_focal,
    linear_min_ent,
    linear_mix_ent,
    linear_value_and_grad,
)
from ._token_stats import TokenStats, linear_token_stats, token_stats

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)

__all__ = [
    "adaptive_ce",
    "cross_entropy",
    "entropy",
    "focal",
    "linear_adaptive_ce",
    "linear_cross_entropy",
    "linear_entropy",
    "linear_focal",
    "linear_min_ent",
    "linear_mix_ent",
    "linear_value_and_grad",
    "log_softmax",
    "min_ent",
    "mix_ent",
    "softmax",
    "value_and_grad",
    "TokenStats",
    "linear_token_stats",
    "token_stats",
]
