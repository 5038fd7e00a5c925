"""Random loss cases that cover every option and their combinations.

A case is a loss, a target kind and a reduction; the seed derived from them draws the
shapes and the options (class weights, label smoothing, bases, weights, eps, gamma), so
every combination appears across the grid and each case is reproducible by its id.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from entroloss import _losses
from entroloss.tools import reference

LOSSES = tuple(definition.name for definition in _losses.LOSSES)
TARGETS = ("index", "soft", "ignore", "kdim")
REDUCTIONS = ("mean", "sum", "none")


def scalar_names(loss: str) -> tuple[str, ...]:
    """The public names of the weights and bases ``loss`` takes, in signature order."""
    return tuple(_losses.by_name(loss).scalars)


@dataclass
class Case:
    loss: str
    logits: np.ndarray  # float64
    target: np.ndarray  # int64 indices or float64 probabilities
    options: dict  # the public keywords: Python values; class weight as a NumPy array

    def expected(self) -> np.ndarray:
        """The float64 reference's loss of this case."""
        return reference.loss(self.loss, self.logits, self.target, **self.options)


def draw(loss: str, target_kind: str, reduction: str, salt: str = "") -> Case:
    seed = zlib.crc32(f"{loss}|{target_kind}|{reduction}|{salt}".encode())
    rng = np.random.default_rng(seed)
    # Two shapes a target kind: JAX compiles every op for every new shape (about 1 s a
    # case the first time, 1 ms the next), and the shapes are test_fuzz.py's job (N = 0
    # and C = 1 included); the grid's are the options and their combinations.
    num_classes = int(rng.choice([3, 5]))
    options: dict = {"reduction": reduction}
    if target_kind == "kdim":
        shape = (3, num_classes, 2, 2)
        options["axis"] = 1
    else:
        shape = (5, num_classes)
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
    for name in scalar_names(loss):
        if rng.random() < 0.7:
            if name.endswith("base"):
                options[name] = float(rng.choice([2.0, 10.0, 1.5, 3.7]))  # a loss's base is > 1
            else:
                options[name] = float(rng.uniform(0.1, 2.0))
    for option in _losses.by_name(loss).options:  # focal's gamma, MIX-ENT's eps, ...
        if option.name == "gamma" or rng.random() < 0.5:
            options[option.name] = float(rng.choice(option.samples))
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
