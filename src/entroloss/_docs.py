"""The docstrings of the generated functions, written from the registry.

Google style, which the API reference's renderer (mkdocstrings) reads: ``Args:``,
``Returns:`` and ``Examples:`` sections, formulas in fenced blocks, no reST ``::``. The
options every loss takes are documented once, here.
"""

from __future__ import annotations

from ._losses import LossDef

__all__ = ["plain", "linear", "COMMON_DOCS"]

COMMON_DOCS = {
    "axis": "the class axis (torch's layout for ``(N, C, d1, ...)`` is ``axis=1``).",
    "weight": "class weights ``w``, shape ``(C,)``, non-negative.",
    "ignore_index": "class index whose positions contribute 0 and are not counted.",
    "label_smoothing": "``eps`` in ``[0, 1]``: the target becomes "
    "``q = (1 - eps) onehot(y) + eps / C``.",
    "reduction": "``\"mean\"`` (divided by the summed class weight of the counted "
    "positions; soft targets: by the number of positions), ``\"sum\"`` or ``\"none\"``.",
    "validate": "read the data to check class indices, soft-target rows, class weights and "
    "scalars given as arrays. ``True`` reads it where that costs no device-to-host sync "
    "(host arrays); on an accelerator, as under ``jax.jit``, an out-of-range class index "
    "then makes its position NaN and the other data checks are skipped. ``\"eager\"`` reads "
    "it on an accelerator too (a sync per call); ``False`` never.",
    "chunk_size": "process this many positions (rows) at a time and keep no ``log p`` for "
    "the backward, which recomputes it chunk by chunk (bounded memory for large "
    "vocabularies, about one more pass). ``None``: all positions at once.",
    "softcap": "soft-cap the logits first, ``z -> softcap * tanh(z / softcap)`` (Gemma 2), "
    "a number > 0; a ``-inf`` logit (a masked class) stays ``-inf``. ``None``: no cap.",
    "z_loss": "add ``z_loss * s * logsumexp(z)^2`` (PaLM's z-loss, ``s`` the target's class "
    "weight) at every counted position, reduced with the loss; a number >= 0.",
    "sample_weight": "one weight per position (the target's shape for class indices; the "
    "logits' shape minus the class axis), finite and >= 0: it multiplies the position's "
    "whole loss (z-loss included), and under ``\"mean\"`` the position counts "
    "``sample_weight * s`` in the divisor. A constant: not differentiated.",
    "denominator": "with ``reduction=\"mean\"`` only: what the sum is divided by, in place "
    "of the counted one (a number > 0 or a 0-d array, integer or floating; a constant, not "
    "differentiated). Pass the whole step's `denominator` (summed over micro-batches, "
    "all-reduced over ranks) so that micro-batch losses add up to the whole batch's.",
    "class_group": "the logits (a linear head's classifier rows and bias) are this "
    "process's slice of the classes, over this ``torch.distributed`` process group "
    "(tensor parallelism); the target holds the global class indices (a soft target: this "
    "slice), ``weight`` all ``C`` classes. Every process raises together on bad input. A "
    "DTensor placed ``Shard`` on the class axis gives the group itself. ``None``: one "
    "process holds every class. See the Tensor parallel guide.",
    "class_axis": "the same over a JAX mesh axis, inside ``shard_map``. ``None``: no axis.",
}

_TARGET = ("integer class indices with the logits' shape minus the class axis, or "
           "probabilities with the logits' shape (soft targets, which torch and JAX "
           "differentiate). An array of the logits' library; with JAX logits a NumPy array "
           "too.")


def _own_args(definition: LossDef) -> list[str]:
    lines = [f"{s.name}: {s.doc}" for s in definition.parameters]
    lines += [f"{o.name}: {o.doc}" for o in definition.options]
    return lines


def _section(title: str, lines: list[str]) -> str:
    body = "\n".join(f"    {line}" for line in lines)
    return f"{title}:\n{body}"


def _body(definition: LossDef) -> str:
    parts = [definition.summary, "", "Per position, with ``p = softmax(logits)`` and ``s`` the "
             "class weight of the target (1 for soft targets):", "", "```text",
             definition.formula]
    if definition.regularizer is not None:
        parts.append(definition.regularizer.formula)
    parts += ["```", ""]
    if definition.notes:
        parts += [definition.notes, ""]
    if definition.regularizer is not None:
        parts += ["With the regularizer's weight 0 this is `cross_entropy` exactly.", ""]
    return "\n".join(parts)


def plain(definition: LossDef) -> str:
    call, printed = definition.doc_example
    args = ["logits: floating array ``(..., C, ...)`` with the classes along ``axis``.",
            f"target: {_TARGET}"]
    args += _own_args(definition) + [f"{k}: {v}" for k, v in COMMON_DOCS.items()]
    return "\n".join([
        _body(definition),
        _section("Args", args), "",
        _section("Returns", ["The loss in the logits' namespace, dtype and device; shape "
                             "``()`` or, with ``reduction=\"none\"``, the logits' shape minus "
                             "the class axis."]), "",
        _section("Examples", ["Uniform logits over 4 classes:", "",
                              ">>> import numpy as np, entroloss as el",
                              f">>> print(round(float({call}), 4))", printed]), "",
        f"References: {definition.citation}",
    ])


def linear(definition: LossDef) -> str:
    name = definition.name
    args = ["hidden: floating array ``(..., H)``, the features last.",
            "classifier: ``(C, H)``, torch's ``nn.Linear`` weight layout; the hidden states' "
            "library, device and dtype.",
            "target: class indices of shape ``hidden.shape[:-1]``, or probabilities "
            "``hidden.shape[:-1] + (C,)`` (differentiated by torch autograd and ``jax.grad``).",
            "bias: ``(C,)`` or None."]
    args += _own_args(definition)
    args += [f"{k}: {v}" for k, v in COMMON_DOCS.items() if k not in ("axis", "chunk_size")]
    args.append("chunk_size: rows of logits per chunk; ``None`` takes as many as keep the "
                "chunk's logits-sized buffers (one or two) within 64 MiB in the compute "
                "dtype, at least one.")
    return "\n".join([
        f"The linear-head form of `{name}`: the loss of ``hidden @ classifier.T + bias``, "
        "without ever building those logits.",
        "",
        "The logits are formed ``chunk_size`` rows at a time, in float32 or wider (float16 and "
        f"bfloat16 inputs are accumulated in float32); each chunk's loss and gradient come from "
        f"the same math as `{name}`, the gradient is multiplied into those of ``hidden``, "
        "``classifier`` and ``bias``, and the chunk is dropped. Positions whose class is "
        "``ignore_index`` are left out of the matmuls where the target can be read (NumPy, "
        "CuPy, torch); under ``jax.jit`` and on array-api-strict they are computed and "
        "contribute 0. Torch autograd and ``jax.grad`` reach ``hidden``, ``classifier``, "
        "``bias`` and every weight or base passed as a 0-d array; `linear_value_and_grad` "
        "gives them explicitly (NumPy, CuPy).",
        "",
        _section("Args", args), "",
        _section("Returns", ["The loss in the hidden states' library, device and dtype; shape "
                             "``()`` or, with ``reduction=\"none\"``, ``hidden.shape[:-1]``."]),
        "",
        _section("Examples", ["A zero classifier gives uniform logits over 4 classes:", "",
                              ">>> import numpy as np, entroloss as el",
                              ">>> hidden, classifier = np.ones((3, 2)), np.zeros((4, 2))",
                              f">>> print(round(float(el.linear_{name}(hidden, classifier, "
                              "np.array([0, 1, 3]))), 4))",
                              definition.doc_example[1]]),
    ])
