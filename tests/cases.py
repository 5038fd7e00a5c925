"""Random loss cases that cover every option and their combinations.

A case is a loss, a target kind and a reduction; the seed derived from them draws the
shapes and the options (class weights, label smoothing, bases, weights, eps, gamma), so
every combination appears across the grid and each case is reproducible by its id.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

LOSSES = ("cross_entropy", "min_ent", "mix_ent", "adaptive_ce", "focal")
TARGETS = ("index", "soft", "ignore", "kdim")
REDUCTIONS = ("mean", "sum", "none")

# public option name -> the reference's keyword
_REFERENCE_NAMES = {
    "base": "ce_base",
    "ce_weight": "ce_weight",
    "ce_base": "ce_base",
    "entropy_weight": "reg_weight",
    "entropy_base": "reg_base",
    "reverse_weight": "reg_weight",
    "reverse_base": "reg_base",
}

# the weights and bases each loss takes
SCALARS = {
    "cross_entropy": ("base",),
    "adaptive_ce": ("base",),
    "focal": ("base",),
    "min_ent": ("ce_weight", "entropy_weight", "ce_base", "entropy_base"),
    "mix_ent": ("ce_weight", "reverse_weight", "ce_base", "reverse_base"),
}


@dataclass
class Case:
    loss: str
    logits: np.ndarray  # float64
    target: np.ndarray  # int64 indices or float64 probabilities
    options: dict  # Python values; class weight as a NumPy array

    def reference_kwargs(self) -> dict:
        out = {"kind": self.loss}
        for name, value in self.options.items():
            if name != "chunk_size":  # how it is computed, not what
                out[_REFERENCE_NAMES.get(name, name)] = value
        if "weight" in out and out["weight"] is not None:
            out["weight"] = [float(v) for v in out["weight"]]
        return out


def draw(loss: str, target_kind: str, reduction: str, salt: str = "") -> Case:
    seed = zlib.crc32(f"{loss}|{target_kind}|{reduction}|{salt}".encode())
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 7))
    options: dict = {"reduction": reduction}
    if target_kind == "kdim":
        shape = (3, num_classes, 2, 2)
        options["axis"] = 1
    else:
        shape = (int(rng.integers(3, 7)), num_classes)
    axis = options.get("axis", -1)
    logits = rng.normal(scale=2.0, size=shape)
    if target_kind == "soft":
        raw = rng.gamma(0.5, size=shape)
        target = raw / raw.sum(axis=axis, keepdims=True)
    else:
        target_shape = shape[:1] + shape[2:] if axis == 1 else shape[:-1]
        target = rng.integers(0, num_classes, size=target_shape)
        if target_kind == "ignore":
            options["ignore_index"] = -100
            target.reshape(-1)[:: 2] = -100
    if rng.random() < 0.6:
        options["weight"] = rng.uniform(0.2, 2.0, size=num_classes)
    if rng.random() < 0.6:
        options["label_smoothing"] = float(rng.choice([0.05, 0.1, 0.3]))
    for name in SCALARS[loss]:
        if rng.random() < 0.7:
            if name.endswith("base"):
                options[name] = float(rng.choice([2.0, 10.0, 0.5, 3.7]))
            else:
                options[name] = float(rng.uniform(0.1, 2.0))
    if loss == "mix_ent" and rng.random() < 0.5:
        options["eps"] = float(rng.choice([1e-3, 1e-8]))
    if loss == "focal":
        options["gamma"] = float(rng.choice([0.5, 1.5, 2.0, 3.0]))
    return Case(loss, logits, target, options)


def grid(salt: str = ""):
    for loss in LOSSES:
        for target_kind in TARGETS:
            for reduction in REDUCTIONS:
                yield f"{loss}-{target_kind}-{reduction}", (loss, target_kind, reduction, salt)


GRID = list(grid())
GRID_IDS = [case_id for case_id, _ in GRID]
GRID_ARGS = [args for _, args in GRID]


def on_backend(case: Case, backend, dtype: str = "float64"):
    """(logits, target, options) as arrays of ``backend``; scalars stay Python floats."""
    logits = backend.asarray(case.logits, dtype)
    target = backend.asarray(case.target, dtype if case.target.dtype.kind == "f" else "int64")
    options = dict(case.options)
    if options.get("weight") is not None:
        options["weight"] = backend.asarray(options["weight"], dtype)
    return logits, target, options


def rounded(case: Case, dtype: str, backend) -> Case:
    """The case as the backend sees it in ``dtype``: inputs rounded, back in float64."""
    if dtype == "float64":
        return case
    logits, target, options = on_backend(case, backend, dtype)
    out = dict(case.options)
    if "weight" in out:
        out["weight"] = backend.to_numpy(options["weight"])
    new_target = backend.to_numpy(target) if case.target.dtype.kind == "f" else case.target
    return Case(case.loss, backend.to_numpy(logits), new_target, out)
