"""The registry: every loss of the package, described once.

Every loss is one instance of the math in :mod:`entroloss._math` (``docs/math.md``)::

    l_i = ce_weight * F_gamma / ln(ce_base)  +  s_i * reg_weight * G / ln(reg_base)

A :class:`LossDef` says which instance: its regularizer ``G`` (a :class:`Term`, or none),
the focal exponent ``gamma``, its public weights and bases (:class:`Scalar`) and its own
options (:class:`Option`). Each term carries everything that is said about it anywhere:
its vectorised math (``_math.terms.REGULARIZERS``), an independent plain-Python reference,
the composition a user would write instead (``entroloss bench``'s baseline), and the bound
on its rounding error (the precision tests). From this table the package generates its
public functions and their docstrings, the ``linear_*`` heads, the torch modules and
``__all__``; ``verify``, ``bench`` and the tests read it too. Adding a loss is one entry
here, plus its term's math in ``_math/terms.py`` if the term is new (docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

from ._math.terms import REGULARIZERS, Regularizer

__all__ = ["LossDef", "Term", "Scalar", "Option", "Position", "LOSSES", "by_name", "focal_reference",
           "focal_bound", "SLOTS", "SLOT_DEFAULTS"]

# The four scalars every loss is written with (the fields of _math.Scalars). Each may be a
# Python float or a 0-d array of the logits' namespace; then it can be learnt.
SLOTS = ("ce_weight", "ce_base", "reg_weight", "reg_base")
# What a slot is when no keyword of the loss names it: no regularizer, natural logs.
SLOT_DEFAULTS = {"ce_weight": 1.0, "ce_base": math.e, "reg_weight": 0.0, "reg_base": math.e}


class Position(NamedTuple):
    """One position as the plain-Python reference sees it: ``p`` and ``log_p`` per class,
    the target distribution ``q`` (smoothing applied), the class weights ``w``, and the
    loss's own options."""

    p: list
    log_p: list
    q: list
    w: list
    options: Mapping[str, float]


@dataclass(frozen=True)
class Term:
    """A term of the losses, with everything the package says about it.

    ``reference(position)`` is its value in plain Python from the definition as written
    (``tools/reference.py``, never the vectorised math). ``user(m, log_p, onehot, options)``
    is the per-row value a user writes in a few lines with the array module ``m`` (torch,
    jax.numpy, numpy; ``onehot`` None unless ``reads_target``), ``user_gradient(m, log_p,
    p, onehot, value, options)`` its hand-derived ``d term / dz``: ``entroloss bench``'s
    baselines, shown as ``user_text``. ``bound(num_classes, options)`` bounds what
    multiplies a rounding error of ``p`` or ``log p`` in the term and its gradient (the
    precision tests' tolerance).
    """

    name: str  # its key in _math.terms.REGULARIZERS
    symbol: str
    formula: str  # one line for the docstrings, in the symbols of docs/math.md
    reference: Callable[[Position], float]
    user: Callable[..., Any]
    user_gradient: Callable[..., Any]
    user_text: str
    bound: Callable[[int, Mapping[str, float]], float]
    minimum: Callable[[Mapping[str, float]], float]  # its least value (property tests)
    reads_target: bool = True  # its user composition needs the one-hot target
    options: tuple[str, ...] = ()  # the loss options the term reads (MIX-ENT's eps)

    @property
    def math(self) -> Regularizer:
        """Its value and gradients, vectorised (a term without them fails at import)."""
        return REGULARIZERS[self.name]


@dataclass(frozen=True)
class Scalar:
    """A weight or base of a loss: a Python number or a 0-d array (then it is learnt).
    A base is a finite number > 1; a weight a finite number >= ``low`` (any sign where
    ``low`` is None)."""

    name: str  # the public keyword
    slot: str  # the field of _math.Scalars it fills
    default: float
    doc: str
    low: float | None = None  # a weight's smallest value
    learnable: bool = True
    span: tuple[float, float] = (0.0, 3.0)  # the weights the tests draw (bases: their own)

    @property
    def is_base(self) -> bool:
        return self.slot.endswith("base")


@dataclass(frozen=True)
class Option:
    """A loss's own option, a Python number fixed for the call (focal's gamma, MIX-ENT's
    eps): its default, its range (``low``, open or closed) and values the tests draw."""

    name: str
    default: float
    low: float
    low_open: bool
    doc: str
    samples: tuple[float, ...]  # what the case grid draws
    span: tuple[float, float]  # what the property tests draw, uniformly ...
    log_span: bool = False  # ... or uniformly in log10 (span are then the exponents)

    @property
    def rule(self) -> str:
        return f"{'>' if self.low_open else '>='} {self.low:g}"


@dataclass(frozen=True)
class LossDef:
    """One loss: which instance of the shared formula, its public names and its docs."""

    name: str  # the public function, ``entroloss.<name>``
    label: str  # how tables and plots name it
    module: str  # its ``torch.nn.Module`` in ``entroloss.backends.torch``
    summary: str  # the docstring's first line
    formula: str  # the per-position loss, for the docstring
    parameters: tuple[Scalar, ...]  # the weights and bases, in signature order
    regularizer: Term | None = None
    gamma: float | None = 0.0  # the focal exponent; None: the loss takes ``gamma=``
    options: tuple[Option, ...] = ()  # its own Python-number options
    notes: str = ""  # a paragraph for the docstring
    # the options of a representative call (verify, bench, docs): a regularizer switched
    # on at a modest weight, a base other than e where the loss has one
    example: Mapping[str, float] = field(default_factory=dict)
    doc_example: tuple[str, str] = ("", "")  # (a call on uniform logits, what it prints)
    citation: str = ""  # where the loss comes from

    def __post_init__(self) -> None:
        wanted = {"gamma"} if self.gamma is None else set()
        if self.regularizer is not None:
            wanted |= set(self.regularizer.options)
        if {o.name for o in self.options} != wanted:
            raise TypeError(f"{self.name}: options {[o.name for o in self.options]} are not "
                            f"those its terms read ({sorted(wanted)})")
        slots = [s.slot for s in self.parameters]
        if len(set(slots)) != len(slots) or not set(slots) <= set(SLOTS):
            raise TypeError(f"{self.name}: each scalar fills one slot of {SLOTS}, got {slots}")
        if self.regularizer is None and any(s.startswith("reg") for s in slots):
            raise TypeError(f"{self.name}: a regularizer's scalar without a regularizer")
        if self.regularizer is not None:
            self.regularizer.math  # noqa: B018  (a term without vectorised math fails here)

    @property
    def scalars(self) -> dict[str, str]:
        """Public keyword -> slot, in signature order."""
        return {s.name: s.slot for s in self.parameters}

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.parameters if s.is_base)

    @property
    def weights(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.parameters if not s.is_base)

    def scalar(self, name: str) -> Scalar:
        return next(s for s in self.parameters if s.name == name)

    def scalar_default(self, name: str) -> float:
        return self.scalar(name).default

    def option_names(self) -> tuple[str, ...]:
        """The loss's own keywords beyond the options every loss takes."""
        return tuple(self.scalars) + tuple(o.name for o in self.options)

    def defaults(self) -> dict[str, float]:
        """The loss's own keywords with their defaults."""
        out = {s.name: s.default for s in self.parameters}
        out.update({o.name: o.default for o in self.options})
        return out


# --- the terms ------------------------------------------------------------------------------


def focal_reference(x: Position) -> float:
    """The main term of every loss, ``F_gamma`` (cross entropy at gamma = 0), in plain
    Python; ``bench`` times it against the framework's own cross entropy, or log p gathered
    at the target."""
    gamma = x.options.get("gamma", 0.0)
    return -sum(w * q * (1 - p) ** gamma * lp
                for p, lp, q, w in zip(x.p, x.log_p, x.q, x.w, strict=True) if w * q != 0)


def focal_bound(num_classes: int, options: Mapping[str, float]) -> float:
    """What multiplies a rounding error of ``log p`` in ``F_gamma`` and its gradient, per
    unit of ``sum_c w_c q_c``."""
    return 2.0 + options.get("gamma", 0.0)


ENTROPY = Term(
    name="entropy", symbol="H", formula="H(p) = -sum_c p_c log(p_c)",
    reference=lambda x: -sum(p * lp for p, lp in zip(x.p, x.log_p, strict=True) if p > 0),
    user=lambda m, lp, t, o: -(m.exp(lp) * lp).sum(-1),
    user_gradient=lambda m, lp, p, t, h, o: -p * (lp + h[:, None]),
    user_text="-(lp.exp() * lp).sum(-1)",
    bound=lambda num, o: math.log(num) + 2.0,
    minimum=lambda o: 0.0,
    reads_target=False,
)

REVERSE = Term(
    name="reverse", symbol="R",
    formula="R = -sum_c p_c log(q_c + eps) = H(p) + KL(p || q + eps)",
    reference=lambda x: -sum(p * math.log(q + x.options["eps"])
                             for p, q in zip(x.p, x.q, strict=True)),
    user=lambda m, lp, t, o: -(m.exp(lp) * m.log(t + o["eps"])).sum(-1),
    user_gradient=lambda m, lp, p, t, r, o: -p * (m.log(t + o["eps"]) + r[:, None]),
    user_text="-(lp.exp() * torch.log(F.one_hot(y, C) + eps)).sum(-1)",
    bound=lambda num, o: 2.0 * (1.0 - math.log(o["eps"])),
    minimum=lambda o: -math.log1p(o["eps"]),  # q <= 1
    options=("eps",),
)

POLY = Term(
    name="poly", symbol="P", formula="P = 1 - sum_c q_c p_c   (1 - p_y for a class index)",
    reference=lambda x: 1.0 - sum(q * p for p, q in zip(x.p, x.q, strict=True)),
    user=lambda m, lp, t, o: 1 - (m.exp(lp) * t).sum(-1),  # optax's poly_loss_cross_entropy
    user_gradient=lambda m, lp, p, t, v, o: p * ((1 - v)[:, None] - t),
    user_text="1 - (lp.exp() * F.one_hot(y, C)).sum(-1)",
    bound=lambda num, o: 2.0,
    minimum=lambda o: 0.0,  # sum_c q_c p_c <= max_c p_c <= 1
)

# --- the scalars and options ------------------------------------------------------------------


def _weight(name: str, slot: str, what: str, **more: Any) -> Scalar:
    return Scalar(name, slot, 1.0, f"weight of {what}; a 0-d array is learnt.", **more)


def _base(name: str, slot: str, what: str) -> Scalar:
    return Scalar(name, slot, math.e, f"logarithm base of {what}, > 1; a 0-d array is learnt.")


_CE_BASE = (_base("base", "ce_base", "the loss"),)
_GAMMA = Option("gamma", 2.0, 0.0, False, "the focal exponent, >= 0.", (0.5, 1.5, 2.0, 3.0),
                (0.0, 4.0))
_EPS = Option("eps", 1e-6, 0.0, True, "keeps ``log(q + eps)`` finite where q = 0, > 0.",
              (1e-3, 1e-8), (-30.0, -1.0), log_span=True)
_PAPER_MIN_MIX = ('"Regularizing cross entropy loss via minimum entropy and K-L divergence" '
                  "(arXiv 2501.13709)")
_CE_FORMULA = "CE = -sum_c w_c q_c log(p_c),   q = (1 - eps) onehot(y) + eps / C"


# --- the losses -------------------------------------------------------------------------------

CROSS_ENTROPY = LossDef(
    name="cross_entropy", label="cross entropy", module="CrossEntropyLoss",
    summary="Cross entropy between ``softmax(logits)`` and the target, as torch computes it.",
    formula=f"l = CE / ln(b)\n{_CE_FORMULA}", parameters=_CE_BASE,
    example={"base": 2.0},
    doc_example=("el.cross_entropy(np.zeros((3, 4)), np.array([0, 2, 3]))", "1.3863"),
    citation="torch.nn.functional.cross_entropy; A. Garg, \"Cross entropy\" (2020): cross "
    "entropy as entropy plus KL divergence, maximum likelihood and MAP.",
)
MIN_ENT = LossDef(
    name="min_ent", label="MIN-ENT", module="MinEntLoss",
    summary="MIN-ENT: cross entropy plus the entropy of the prediction.",
    formula="l = ce_weight * CE / ln(ce_base) + entropy_weight * s * H(p) / ln(entropy_base)",
    parameters=(_weight("ce_weight", "ce_weight", "the cross entropy"),
                _weight("entropy_weight", "reg_weight", "the entropy", span=(-1.0, 3.0)),
                _base("ce_base", "ce_base", "the cross entropy"),
                _base("entropy_base", "reg_base", "the entropy")),
    regularizer=ENTROPY,
    example={"entropy_weight": 0.5, "entropy_base": 2.0},
    doc_example=("el.min_ent(np.zeros((2, 4)), np.array([1, 3]))", "2.7726"),
    citation=f"{_PAPER_MIN_MIX} (MIN-ENT).",
)
MIX_ENT = LossDef(
    name="mix_ent", label="MIX-ENT", module="MixEntLoss",
    summary="MIX-ENT: cross entropy plus the reverse cross entropy ``H(p) + KL(p || q)``.",
    formula="l = ce_weight * CE / ln(ce_base) + reverse_weight * s * R / ln(reverse_base)",
    parameters=(_weight("ce_weight", "ce_weight", "the cross entropy"),
                _weight("reverse_weight", "reg_weight", "the reverse cross entropy"),
                _base("ce_base", "ce_base", "the cross entropy"),
                _base("reverse_base", "reg_base", "the reverse cross entropy")),
    regularizer=REVERSE, options=(_EPS,),
    notes="The regularizer is the paper's \"minimum-entropy term plus a K-L term with target "
    "and prediction swapped\"; the paper's code is not public, this is the definition the "
    "package commits to (docs/math.md). With a one-hot target R is about ``-log(eps)`` "
    "(13.8 at the default eps) where the prediction is wrong, so the default "
    "``reverse_weight=1`` makes it dominate the loss: the papers' settings are around 0.1.",
    example={"reverse_weight": 0.3, "eps": 1e-4},
    doc_example=("el.mix_ent(np.zeros((1, 4)), np.array([0]))", "11.7479"),
    citation=f"{_PAPER_MIN_MIX} (MIX-ENT).",
)
ADAPTIVE_CE = LossDef(
    name="adaptive_ce", label="adaptive CE", module="AdaptiveCELoss",
    summary="The linearly adaptive cross entropy ``-(1 - p_y) log p_y``.",
    formula="l = -sum_c w_c q_c (1 - p_c) log(p_c) / ln(b)", parameters=_CE_BASE, gamma=1.0,
    notes="For a class index without smoothing this is ``-w_y (1 - p_y) log p_y / ln b``: "
    "`focal` with ``gamma=1``.",
    doc_example=("el.adaptive_ce(np.zeros((1, 4)), np.array([2]))", "1.0397"),
    citation="J. W. Shim, \"Enhancing Cross Entropy with a Linearly Adaptive Loss Function "
    "for Optimized Classification Performance\" (arXiv 2507.10574).",
)
FOCAL = LossDef(
    name="focal", label="focal", module="FocalLoss",
    summary="Focal loss over the target distribution.",
    formula="l = -sum_c w_c q_c (1 - p_c)^gamma log(p_c) / ln(b)", parameters=_CE_BASE,
    gamma=None, options=(_GAMMA,),
    notes="``gamma=0`` is `cross_entropy`; ``gamma=1`` is `adaptive_ce`.",
    example={"gamma": 2.0},
    doc_example=("el.focal(np.zeros((1, 4)), np.array([2]), gamma=2.0)", "0.7798"),
    citation="Lin, Goyal, Girshick, He, Dollar, \"Focal Loss for Dense Object Detection\" "
    "(2017); generalises the linearly adaptive loss (`adaptive_ce`).",
)

POLY1 = LossDef(
    name="poly1", label="Poly-1", module="Poly1Loss",
    summary="Poly-1: cross entropy plus ``epsilon (1 - p_y)``, the leading polynomial term.",
    formula="l = CE + epsilon * s * P",
    parameters=(Scalar("epsilon", "reg_weight", 1.0, "weight of the polynomial term, >= -1 "
                       "(the loss then decreases in p_y); a 0-d array is learnt.", low=-1.0,
                       span=(-1.0, 3.0)),),
    regularizer=POLY,
    notes="With soft targets or label smoothing ``p_y`` is ``sum_c q_c p_c``, as in optax's "
    "``poly_loss_cross_entropy``.",
    example={"epsilon": 2.0},
    doc_example=("el.poly1(np.zeros((2, 4)), np.array([1, 3]))", "2.1363"),
    citation="Leng, Tan, Liu, Cubuk, Shi, Cheng, Anguelov, Tan, \"PolyLoss: A Polynomial "
    "Expansion Perspective of Classification Loss Functions\" (ICLR 2022, arXiv 2204.12511).",
)

LOSSES: tuple[LossDef, ...] = (CROSS_ENTROPY, MIN_ENT, MIX_ENT, ADAPTIVE_CE, FOCAL, POLY1)


def by_name(name: str) -> LossDef:
    """The loss called ``name`` (its function name); a ``ValueError`` lists the names."""
    for definition in LOSSES:
        if definition.name == name:
            return definition
    raise ValueError(f"unknown loss {name!r}; the losses are {', '.join(d.name for d in LOSSES)}")
