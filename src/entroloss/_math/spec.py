"""What one evaluation is: its static part, its four scalars, its inputs besides the
logits, and what the forward keeps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Spec", "ClassSlice", "Scalars", "Inputs", "Residuals", "Gradients"]


@dataclass(frozen=True)
class ClassSlice:
    """The classes sharded over processes (tensor parallelism): each holds a slice of them,
    and ``num_classes`` is the count of all slices together.

    ``group`` does the collectives, as an object with ``sum(x)`` and ``max(x)`` (elementwise
    over the processes: all-reduces of numbers per row, never of the logits) and
    ``offset()``, the first class of this process's slice (an int, or a 0-d integer array
    under tracing). Hashable, so that a spec holding one stays static for JAX.
    """

    num_classes: int
    group: Any


@dataclass(frozen=True)
class Spec:
    """The static part of one loss evaluation (hashable, so JAX can treat it as static).

    ``axis`` is normalised to a non-negative int. ``regularizer`` is ``None`` or a name in
    ``terms.REGULARIZERS`` (``"entropy"``, ``"reverse"``, ``"poly"``). ``soft`` says the
    target holds a probability vector per position rather than a class index. ``softcap``
    and ``z_loss`` are off at ``None`` and ``0.0``, and then cost nothing.
    """

    axis: int
    soft: bool
    reduction: str = "mean"
    gamma: float = 0.0
    regularizer: str | None = None
    eps: float = 1e-6
    label_smoothing: float = 0.0
    ignore_index: int | None = None
    # validation read the target: class indices all in range, soft rows distributions;
    # where it did not (jax.jit, torch.compile, validate=False, an accelerator under
    # validate=True) the math marks a bad position NaN, at a little cost (target.py)
    target_checked: bool = False
    chunk_size: int | None = None  # rows per chunk: bounded memory (see chunks.py)
    softcap: float | None = None  # logits -> softcap * tanh(logits / softcap), first
    z_loss: float = 0.0  # + s * z_loss * logsumexp(capped logits)^2 per counted position
    # None: the logits hold every class; else this process's slice of them (tensor
    # parallel): every sum over the classes is then all-reduced (target.py, terms.py)
    classes: ClassSlice | None = None


class Scalars(NamedTuple):
    """The four scalars of ``l = ce_weight F / ln ce_base + s reg_weight G / ln reg_base``.

    Each is a Python float or a 0-d array (then it can be learnt). A NamedTuple, so that
    JAX sees a pytree and torch can take it apart by name.
    """

    ce_weight: Any = 1.0
    ce_base: Any = math.e
    reg_weight: Any = 0.0
    reg_base: Any = math.e

    def learnt(self) -> "Scalars":
        """Which of the four are arrays (and so get a gradient), as booleans."""
        return Scalars(*(not isinstance(v, (int, float)) for v in self))


class Inputs(NamedTuple):
    """What a call gives besides the logits: the target (in the logits' layout), the
    class weights (or None), the four scalars, and the weight of each position
    (``sample_weight``: the positions' shape, or None), which multiplies the position's
    loss and its share of the mean's divisor."""

    target: Any
    weight: Any
    scalars: Scalars
    sample_weight: Any = None


class Residuals(NamedTuple):
    """What the forward keeps for the backward: the logits themselves and numbers per
    position, never anything else of the logits' size (the backward rebuilds log p as it
    writes the gradient). ``reg`` is ``None`` without a regularizer, ``denominator``
    outside ``reduction="mean"``."""

    logits: Any
    row_max: Any  # (..., 1), classes last
    log_norm: Any  # (..., 1)
    main: Any  # the main term F per position
    reg: Any  # the regularizer G per position
    denominator: Any  # the mean's divisor: the counted one, or the one the call gave


class Gradients(NamedTuple):
    """What the backward returns: ``logits`` in the logits' layout and dtype; ``scalars``
    (a :class:`Scalars`, None where a scalar is a Python float); ``target`` for soft
    targets when asked for (else None)."""

    logits: Any
    scalars: Scalars
    target: Any = None
