"""Random loss cases that cover every option and their combinations.

A case is a loss, a target kind and a reduction; the seed derived from them draws the
shapes and the options (class weights, label smoothing, bases, weights, eps, gamma, sample
weights and, under "mean", a given denominator), so every combination appears across the
grid and each case is reproducible by its id.
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
    # The normalization options (issue 26), drawn last (the draws above stay as they were)
    # and with a probability rather than as axes: one weight per position, an exact zero
    # sometimes; under "mean" the caller's divisor, a Python number or a 0-d array.
    if rng.random() < 0.35:
        positions = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
        sample_weight = rng.uniform(0.0, 2.0, size=positions)
        if rng.random() < 0.5:
            sample_weight.reshape(-1)[-1] = 0.0
        options["sample_weight"] = sample_weight
    if reduction == "mean" and rng.random() < 0.3:
        denominator = float(rng.uniform(0.5, 20.0))
        options["denominator"] = denominator if rng.random() < 0.5 else np.asarray(denominator)
    return Case(loss, logits, target, options)


def grid(salt: str = ""):
    for loss in LOSSES:
        for target_kind in TARGETS:
            for reduction in REDUCTIONS:
                yield f"{loss}-{target_kind}-{reduction}", (loss, target_kind, reduction, salt)


GRID = list(grid())
GRID_IDS = [case_id for case_id, _ in GRID]
GRID_ARGS = [args for _, args in GRID]


def arrays_on(options: dict, backend, dtype: str = "float64") -> dict:
    """``options`` with every NumPy array among them (class and sample weights, a 0-d
    denominator) as an array of ``backend``; Python values as they are."""
    return {name: backend.asarray(value, dtype) if isinstance(value, np.ndarray) else value
            for name, value in options.items()}


def arrays_back(options: dict, on: dict, backend) -> dict:
    """``options`` with each array replaced by its value on the backend (``on``), back in
    NumPy: rounded to the dtype the backend saw."""
    return {name: backend.to_numpy(on[name]) if isinstance(value, np.ndarray) else value
            for name, value in options.items()}


def on_backend(case: Case, backend, dtype: str = "float64"):
    """(logits, target, options) as arrays of ``backend``; scalars stay Python floats."""
    logits = backend.asarray(case.logits, dtype)
    target = backend.asarray(case.target, dtype if case.target.dtype.kind == "f" else "int64")
    return logits, target, arrays_on(case.options, backend, dtype)


def rounded(case: Case, dtype: str, backend) -> Case:
    """The case as the backend sees it in ``dtype``: inputs rounded, back in float64."""
    if dtype == "float64":
        return case
    logits, target, options = on_backend(case, backend, dtype)
    out = arrays_back(case.options, options, backend)
    new_target = backend.to_numpy(target) if case.target.dtype.kind == "f" else case.target
    return Case(case.loss, backend.to_numpy(logits), new_target, out)
