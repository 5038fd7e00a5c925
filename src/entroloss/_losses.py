"""The losses of the package, each described once.

Every loss is one instance of the math in :mod:`entroloss._math` (see ``docs/math.md``)::

    l_i = ce_weight * F_gamma / ln(ce_base)  +  s_i * reg_weight * G / ln(reg_base)

A :class:`LossDef` says which instance: the regularizer ``G`` (none, the prediction's
entropy, the reverse cross entropy), the focal exponent ``gamma``, and which public keyword
names the four scalars of that formula. The public functions (:mod:`entroloss._api`), the
torch modules, the JAX checks, the command line and the tests all read this table, so
adding a loss is one entry here plus its public function (a signature and a docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["LossDef", "LOSSES", "by_name", "SLOTS", "SLOT_DEFAULTS"]

# The four scalars every loss is written with (the fields of _math.Scalars). Each may be a
# Python float or a 0-d array of the logits' namespace; then it can be learnt.
SLOTS = ("ce_weight", "ce_base", "reg_weight", "reg_base")
# What a slot is when no keyword of the loss names it: no regularizer, natural logs.
SLOT_DEFAULTS = {"ce_weight": 1.0, "ce_base": math.e, "reg_weight": 0.0, "reg_base": math.e}


@dataclass(frozen=True)
class LossDef:
    """One loss: which instance of the shared formula, and its public names."""

    name: str  # the public function, ``entroloss.<name>``
    label: str  # how tables and plots name it
    module: str  # its ``torch.nn.Module`` in ``entroloss.backends.torch``
    scalars: Mapping[str, str]  # public keyword -> slot in SLOTS, in signature order
    regularizer: str | None = None  # None, "entropy" (MIN-ENT) or "reverse" (MIX-ENT)
    gamma: float | None = 0.0  # the focal exponent; None: the loss takes ``gamma=``
    takes_eps: bool = False  # the reverse term's ``eps=`` keyword
    # the options of a representative call (verify, bench, docs): a regularizer switched
    # on at a modest weight, a base other than e where the loss has one
    example: Mapping[str, float] = field(default_factory=dict)
    reference: str = ""  # where the loss comes from

    @property
    def bases(self) -> tuple[str, ...]:
        """The public names of the logarithm bases."""
        return tuple(name for name, slot in self.scalars.items() if slot.endswith("base"))

    @property
    def weights(self) -> tuple[str, ...]:
        """The public names of the term weights."""
        return tuple(name for name, slot in self.scalars.items() if slot.endswith("weight"))

    def scalar_default(self, name: str) -> float:
        """The default of a public weight or base: 1 for weights, e for bases."""
        return math.e if self.scalars[name].endswith("base") else 1.0

    def option_names(self) -> tuple[str, ...]:
        """The loss's own keywords beyond the options every loss takes."""
        extra = ("gamma",) if self.gamma is None else ()
        return tuple(self.scalars) + extra + (("eps",) if self.takes_eps else ())


_CE_BASE = {"base": "ce_base"}
_PAPER_MIN_MIX = "'Regularizing cross entropy loss via minimum entropy and K-L divergence' (arXiv 2501.13709)"

CROSS_ENTROPY = LossDef(
    name="cross_entropy", label="cross entropy", module="CrossEntropyLoss", scalars=_CE_BASE,
    example={"base": 2.0},
    reference="torch.nn.functional.cross_entropy; A. Garg, 'Cross entropy' (2020): cross "
    "entropy as entropy plus KL divergence, maximum likelihood and MAP",
)
MIN_ENT = LossDef(
    name="min_ent", label="MIN-ENT", module="MinEntLoss",
    scalars={"ce_weight": "ce_weight", "entropy_weight": "reg_weight", "ce_base": "ce_base",
             "entropy_base": "reg_base"},
    regularizer="entropy", example={"entropy_weight": 0.5, "entropy_base": 2.0},
    reference=_PAPER_MIN_MIX,
)
MIX_ENT = LossDef(
    name="mix_ent", label="MIX-ENT", module="MixEntLoss",
    scalars={"ce_weight": "ce_weight", "reverse_weight": "reg_weight", "ce_base": "ce_base",
             "reverse_base": "reg_base"},
    regularizer="reverse", takes_eps=True, example={"reverse_weight": 0.3, "eps": 1e-4},
    reference=_PAPER_MIN_MIX,
)
ADAPTIVE_CE = LossDef(
    name="adaptive_ce", label="adaptive CE", module="AdaptiveCELoss", scalars=_CE_BASE,
    gamma=1.0,
    reference="J. W. Shim: 'Enhancing Cross Entropy with a Linearly Adaptive Loss Function "
    "for Optimized Classification Performance' (arXiv 2507.10574)",
)
FOCAL = LossDef(
    name="focal", label="focal", module="FocalLoss", scalars=_CE_BASE, gamma=None,
    example={"gamma": 2.0},
    reference="Lin, Goyal, Girshick, He, Dollar: 'Focal Loss for Dense Object Detection' "
    "(2017); generalises the linearly adaptive loss",
)

LOSSES: tuple[LossDef, ...] = (CROSS_ENTROPY, MIN_ENT, MIX_ENT, ADAPTIVE_CE, FOCAL)


def by_name(name: str) -> LossDef:
    """The loss called ``name`` (its function name); a ``ValueError`` lists the names."""
    for definition in LOSSES:
        if definition.name == name:
            return definition
    raise ValueError(f"unknown loss {name!r}; the losses are {', '.join(d.name for d in LOSSES)}")
