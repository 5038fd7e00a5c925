"""Property-based tests: hypothesis draws shapes, class counts, class axes, dtypes, targets
(class indices, soft targets, ignored positions), every option, and runs each example on
every installed backend (the ``backend`` fixture), through every way that backend
differentiates (``el.value_and_grad``; torch autograd; ``jax.grad`` under ``jax.jit``).

Properties:
- values and gradients (logits and the weights and bases given as 0-d arrays) agree with
  the independent float64 reference of ``entroloss.tools.reference`` (gradients by central
  differences of it), evaluated on exactly the inputs the backend sees, within the dtype's
  tolerance; NaN only where the reference is NaN, +-inf only where it is or where the
  true value is beyond the dtype's range;
- every loss is >= 0 when every base is > 1 and every weight is >= 0 (MIX-ENT: >= its exact
  lower bound ``-reverse_weight * s * log(1 + eps) / ln b``, which is < 0);
- ``entropy`` lies in ``[0, log_b C]``, ``softmax`` rows sum to 1, ``log_softmax <= 0``;
- adding a constant to a position's logits changes neither the loss nor its gradient;
- each position's logit gradient sums to 0 over the classes (cross entropy, as asked, and
  every other loss, since each is shift invariant);
- the linear-head losses (``linear_<loss>``) equal the plain loss on
  ``hidden @ classifier.T + bias``, value and the gradients of hidden, classifier, bias and
  the learnt scalars (float64; NumPy, torch, JAX jitted), on the plain examples' targets and
  options with H, a bias or not, and ``chunk_size`` drawn.

Tolerances: the dtype's (``tests.helpers.assertions.tolerance``), relative to the size of
the terms that may cancel, plus a few ulps of those terms
(``tests.helpers.reliability.known_error``).

Profiles (hypothesis settings profiles, chosen by ``ENTROLOSS_FUZZ``):
- ``quick`` (default, CI): derandomized; per backend 40 examples of the reference
  property (16 on JAX), 20 of the linear head's (8 on JAX) and 10 of each other one (5 on
  JAX); well under a minute;
- ``long``: ``ENTROLOSS_FUZZ=long``, random; per backend 2,500 examples of the reference
  property, 300 of the linear head's and 250 of each other one: 14,900 examples on the
  four CPU backends. Add
  ``--hypothesis-show-statistics`` to see the counts; docs/reliability.md records the
  last run.
``ENTROLOSS_FUZZ_EXAMPLES=n`` sets the examples per property and backend of either
profile. JAX runs jitted here (the way it is trained with; eager JAX compiles every op for
every new shape, seconds per example); the eager path runs throughout the rest of the
suite. NumPy RuntimeWarnings are silenced inside ``evaluate`` (the numbers are checked).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import entroloss as el
from entroloss import _losses
from entroloss.tools import reference
from tests.helpers.assertions import tolerance
from tests.helpers.cases import Case, scalar_names
from tests.helpers.platforms import backend_params
from tests.helpers.reliability import (LOSSES, coefficient_scale, compute_ulp, known_error,
                                       reference_loss)

PROFILE = os.environ.get("ENTROLOSS_FUZZ", "quick")
if PROFILE not in ("quick", "long"):
    raise ValueError(f"ENTROLOSS_FUZZ must be 'quick' or 'long', got {PROFILE!r}")

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("entroloss-quick", max_examples=10, derandomize=True, **_COMMON)
settings.register_profile("entroloss-long", max_examples=500, derandomize=False, **_COMMON)
FUZZ = settings.get_profile(f"entroloss-{PROFILE}")

# examples per backend: (quick, long); JAX compiles each example (~0.2 s), so it gets
# fewer in the quick profile and the same number in the long one
BUDGET = {
    "reference": (40, 2500),
    "property": (10, 250),
    "linear": (20, 300),
}


def examples(backend, kind: str) -> int:
    override = os.environ.get("ENTROLOSS_FUZZ_EXAMPLES")
    if override:  # a developer's knob: this many examples per property and backend
        return int(override)
    quick, long = BUDGET[kind]
    if PROFILE == "long":
        return long
    return max(5, quick * 2 // 5) if backend.library == "jax" else quick


REPORT = os.environ.get("ENTROLOSS_FUZZ_REPORT")  # a file to append one JSON line per test to


def _describe(example) -> tuple:
    """(loss, dtype, target kind, reduction) of an example, for the report."""
    if isinstance(example, LinearExample):
        example = (example.case, "float64")
    while isinstance(example, tuple) and not isinstance(example[0], Case):
        example = example[0]
    case, dtype = example[0], example[1]
    kind = "soft" if case.target.dtype.kind == "f" else (
        "ignore" if "ignore_index" in case.options else "index")
    return case.loss, dtype, kind, case.options["reduction"]


def run_given(backend, kind, strategy, check):
    """Run ``check`` on examples of ``strategy`` under this file's profile; with
    ``ENTROLOSS_FUZZ_REPORT`` set, append how many examples passed, and of what kinds."""
    counts: dict = {"examples": 0, "loss": Counter(), "dtype": Counter(), "target": Counter(),
                    "reduction": Counter()}

    @settings(FUZZ, max_examples=examples(backend, kind))
    @given(strategy)
    def run(example):
        check(example)
        counts["examples"] += 1
        for key, value in zip(("loss", "dtype", "target", "reduction"), _describe(example), strict=True):
            counts[key][value] += 1

    start = time.perf_counter()
    run()
    if REPORT:
        line = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                "profile": PROFILE, "seconds": round(time.perf_counter() - start, 1),
                **{k: (dict(v) if isinstance(v, Counter) else v) for k, v in counts.items()}}
        with open(REPORT, "a") as f:
            f.write(json.dumps(line) + "\n")


# --- strategies --------------------------------------------------------------------------

HALF = ("float16", "bfloat16")
# A constant added to every logit: the losses must not lose precision to it.
OFFSETS = {"float64": [0.0, -50.0, 1e3], "float32": [0.0, -50.0, 1e3], "float16": [0.0, -50.0],
           "bfloat16": [0.0, -50.0]}
# weights may be negative only where the math allows it (a penalty): the registry's spans
SCALAR_RANGES = {s.name: s.span for d in _losses.LOSSES for s in d.parameters if not s.is_base}


def _base(draw, dtype):
    # a loss's base is > 1 (below, ln b < 0 flips the term's sign: refused); bases near 1
    # scale a term by 1/ln b: kept to 1/ln b <= 20 (2.5 for half precision)
    return draw(st.floats(1.5 if dtype in HALF else 1.05, 50.0))


@st.composite
def fuzz_cases(draw, backend, *, non_negative=False, grid=False,
               losses=LOSSES, dtypes=None):
    """One example: (Case in float64, dtype, names of the scalars passed as 0-d arrays).
    ``dtypes``: those drawn from (default: all of the backend's).

    Every base is > 1 (as the losses require). ``non_negative``: every weight >= 0. ``grid``: logits
    on a dyadic grid, small enough that adding an integer constant is exact in the dtype.
    """
    loss = draw(st.sampled_from(losses))
    dtype = draw(st.sampled_from(dtypes or backend.dtypes))
    kind = draw(st.sampled_from(["index", "soft", "ignore"]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    num_classes = draw(st.integers(1, 7))
    positions = (draw(st.integers(0, 6)),) + draw(st.sampled_from([(), (), (2,), (1, 3)]))
    axis = draw(st.integers(0, len(positions)))
    shape = positions[:axis] + (num_classes,) + positions[axis:]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    # logits
    if grid:
        step = {"bfloat16": 0.5, "float16": 0.25}.get(dtype, 1 / 16)
        z = np.round(rng.uniform(-8, 8, size=shape) / step) * step
    else:
        scales = [0.01, 1.0, 3.0, 10.0] + ([] if dtype in HALF else [30.0])
        z = rng.normal(scale=draw(st.sampled_from(scales)), size=shape)
        if draw(st.booleans()):  # ties
            z = np.round(z)
        z = z + draw(st.sampled_from(OFFSETS[dtype]))

    options: dict = {"reduction": reduction}
    if draw(st.booleans()):
        options["axis"] = axis - len(shape)  # the same axis, counted from the end
    elif axis != len(shape) - 1:
        options["axis"] = axis
    smoothing = draw(st.one_of(st.just(0.0), st.sampled_from([0.05, 0.3, 1.0]),
                               st.floats(0.0, 1.0)))
    if smoothing or draw(st.booleans()):
        options["label_smoothing"] = smoothing

    # target, and where the target distribution has no mass (maskable classes)
    moved = np.moveaxis(z, axis, -1)  # a view: classes last
    if kind == "soft":
        alpha = draw(st.sampled_from([0.1, 1.0, 10.0]))
        t = rng.dirichlet(np.full(num_classes, alpha), size=moved.shape[:-1])
        if draw(st.booleans()):  # exact zeros
            t = np.where(rng.random(t.shape) < 0.4, 0.0, t)
            t[..., 0] = np.where(t.sum(-1) == 0, 1.0, t[..., 0])
            t = t / t.sum(-1, keepdims=True)
        empty = t == 0
        target = np.moveaxis(t, -1, axis)
    else:
        y = rng.integers(0, num_classes, size=positions)
        empty = np.arange(num_classes) != y[..., None]
        if kind == "ignore":
            ignore = draw(st.sampled_from([-100, -1, num_classes, 0]))
            options["ignore_index"] = ignore
            dropped = rng.random(positions) < draw(st.sampled_from([0.3, 0.7, 1.0]))
            y = np.where(dropped, ignore, y)
            empty = np.where((y == ignore)[..., None], True, empty)
        target = y
    if not grid and not options.get("label_smoothing") and draw(st.booleans()):
        masked = empty & (rng.random(empty.shape) < 0.5)
        moved = np.where(masked, -np.inf, moved)
        z = np.moveaxis(moved, -1, axis)

    if draw(st.booleans()):  # class weights, with exact zeros sometimes
        w = rng.uniform(0.0, 3.0, size=num_classes)
        if draw(st.booleans()):
            w = np.where(rng.random(num_classes) < 0.3, 0.0, w)
        options["weight"] = w
    arrays = []
    for name in scalar_names(loss):
        if not draw(st.booleans()):
            continue
        if name.endswith("base"):
            options[name] = _base(draw, dtype)
        else:
            low, high = SCALAR_RANGES[name]
            options[name] = draw(st.floats(0.0 if non_negative else low, high))
        if draw(st.booleans()):
            arrays.append(name)
    for option in _losses.by_name(loss).options:  # focal's gamma, MIX-ENT's eps, ...
        if option.name == "gamma" or draw(st.booleans()):
            low, high = option.span
            value = draw(st.floats(low, high))
            options[option.name] = 10.0 ** value if option.log_span else value
    if draw(st.booleans()):  # a few rows at a time: the chunked forward and backward
        options["chunk_size"] = draw(st.integers(1, 4))
    return Case(loss, z, target, options), dtype, tuple(arrays)


# --- running one example on a backend, every way it differentiates ---------------------------

def _on_backend(backend, case: Case, dtype: str, arrays: tuple):
    """Inputs as the backend's arrays, and the case as the backend sees it (rounded)."""
    soft = case.target.dtype.kind == "f"
    logits = backend.asarray(case.logits, dtype)
    target = backend.asarray(case.target, dtype) if soft else backend.asarray(case.target)
    options, seen = dict(case.options), dict(case.options)
    if "weight" in options:
        options["weight"] = backend.asarray(case.options["weight"], dtype)
        seen["weight"] = backend.to_numpy(options["weight"])
    for name in arrays:
        options[name] = backend.asarray(np.float64(case.options[name]), dtype)
        seen[name] = float(backend.to_numpy(options[name]))
    seen_case = Case(case.loss, backend.to_numpy(logits),
                     backend.to_numpy(target) if soft else case.target, seen)
    return logits, target, options, seen_case


def evaluate(backend, fn, logits, target, options: dict, arrays: tuple) -> list:
    """``[(path, value, {"logits": ..., name: ...})]`` as float64 NumPy, for
    ``el.value_and_grad`` and the framework's own autograd (JAX jitted).

    NumPy's RuntimeWarnings are silenced here: this file checks the numbers (a NaN that
    leaks fails it); warnings are test_extremes.py's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _evaluate(backend, fn, logits, target, options, arrays)


def _evaluate(backend, fn, logits, target, options: dict, arrays: tuple) -> list:
    np_ = backend.to_numpy
    statics = {k: v for k, v in options.items() if k not in arrays}
    if backend.library == "jax":
        import jax

        def paths(z, params):
            value = fn(z, target, **statics, **params)
            explicit_value, grads = el.value_and_grad(fn, z, target, **statics, **params)
            auto = jax.grad(lambda z, params: fn(z, target, **statics, **params).sum(),
                            argnums=(0, 1))(z, params)
            return value, explicit_value, grads, auto

        value, explicit_value, grads, (g_z, g_params) = jax.jit(paths)(
            logits, {name: options[name] for name in arrays})
        auto = {"logits": g_z, **g_params}
        return [("value_and_grad", np_(explicit_value), {k: np_(v) for k, v in grads.items()}),
                ("jax.grad", np_(value), {k: np_(v) for k, v in auto.items()})]
    value = fn(logits, target, **options)
    explicit_value, grads = el.value_and_grad(fn, logits, target, **options)
    out = [("value_and_grad", np_(explicit_value), {k: np_(v) for k, v in grads.items()})]
    np.testing.assert_array_equal(np_(explicit_value), np_(value))
    if backend.library == "torch":
        leaves = {name: options[name].clone().requires_grad_(True) for name in arrays}
        z = logits.clone().requires_grad_(True)
        fn(z, target, **{**options, **leaves}).sum().backward()
        auto = {"logits": z.grad, **{name: leaf.grad for name, leaf in leaves.items()}}
        out.append(("torch.autograd", np_(value), {k: np_(v) for k, v in auto.items()}))
    return out


def reference_grads(case: Case, arrays: tuple) -> dict:
    """Central differences of the reference's sum(loss), for the logits (finite entries;
    -inf gets 0) and each scalar passed as an array."""

    def total(logits, options):
        return float(np.sum(reference.loss(case.loss, logits, case.target, **options)))

    # The losses are invariant to a constant added to a position's logits (a property
    # fuzzed below): differences are taken at the logits minus each position's largest
    # finite logit (an exact subtraction), so an offset of 1e3 costs no precision.
    axis = case.options.get("axis", -1)
    finite = np.where(np.isfinite(case.logits), case.logits, -np.inf)
    top = np.max(finite, axis=axis, keepdims=True, initial=-np.inf)
    z = case.logits - np.where(np.isfinite(top), top, 0.0)
    step = 1e-6
    out = {"logits": reference.central_differences(lambda v: total(v, case.options), z, step=step)}
    for name in arrays:
        value = case.options[name]
        out[name] = reference.central_differences(
            lambda v, name=name: total(z, {**case.options, name: float(v)}), value,
            step=step * max(1.0, abs(value)))
    return out


def _magnitude(case: Case) -> np.ndarray:
    """The loss with every term made non-negative (|weights|, |ln b|): the scale that
    rounding errors are relative to when terms of both signs cancel."""
    opts = dict(case.options)
    for name in scalar_names(case.loss):
        if name in opts:
            opts[name] = abs(opts[name]) if not name.endswith("base") else max(opts[name], 1 / opts[name])
    return np.abs(reference_loss(case.loss, case.logits, case.target, opts))


def _largest(dtype: str) -> float:
    return {"float16": 65504.0, "bfloat16": 3.3895313892515355e38,
            "float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}[dtype]


def assert_matches(got, expected, magnitude, dtype, what, *, floor=(0.0, 0.0), allowance=0.0):
    """``got`` within the dtype's tolerance of ``expected``, relative to |expected| plus
    ``magnitude``; ``floor`` = (rtol, atol) at least (for central differences);
    ``allowance``: the implementation's known absolute error (``known_error``)."""
    tol = tolerance(dtype)
    tol = {"rtol": max(tol["rtol"], floor[0]), "atol": max(tol["atol"], floor[1])}
    expected = np.asarray(expected, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    # the correctly rounded result of a finite value beyond the dtype's range is +-inf
    beyond = np.abs(np.nan_to_num(expected)) > _largest(dtype)
    expected = np.where(beyond, np.copysign(np.inf, expected), expected)
    assert got.shape == expected.shape, what
    assert np.array_equal(np.isnan(got), np.isnan(expected)), (what, got, expected)
    inf = np.isinf(expected)
    assert np.array_equal(got[inf], expected[inf]), (what, got, expected)
    ok = ~np.isnan(expected) & ~inf
    assert np.all(np.isfinite(got[ok])), (what, got, expected)
    magnitude = np.nan_to_num(np.asarray(magnitude, dtype=np.float64), nan=0.0, posinf=0.0)
    bound = tol["atol"] + tol["rtol"] * (np.abs(expected) + magnitude) + allowance
    excess = np.abs(got - expected) - bound
    assert np.all(excess[ok] <= 0), (
        f"{what}: |got - expected| exceeds the {dtype} tolerance by {np.max(excess[ok]):.3g}\n"
        f"got {got}\nexpected {expected}")


# --- the properties ---------------------------------------------------------------------

def _scalar_allowance(seen: Case, dtype: str, name: str) -> float:
    """The known error (``known_error``) of the gradient for a weight or base: that of the
    term it multiplies, with every weight taken as 1, over ``b |ln b|`` for a base."""
    unit = {k: (1.0 if k in SCALAR_RANGES else v) for k, v in seen.options.items()}
    total = float(np.sum(known_error(seen.loss, seen.logits, seen.target, unit, dtype)))
    if name.endswith("base"):
        b = seen.options[name]
        total /= b * abs(math.log(b))
    return total


def test_matches_reference(backend):
    def check(example):
        case, dtype, arrays = example
        fn = getattr(el, case.loss)
        logits, target, options, seen = _on_backend(backend, case, dtype, arrays)
        expected = reference_loss(seen.loss, seen.logits, seen.target, seen.options)
        magnitude = _magnitude(seen)
        known = known_error(seen.loss, seen.logits, seen.target, seen.options, dtype)
        known_g = known_error(seen.loss, seen.logits, seen.target, seen.options, dtype,
                              per_class=True)
        expected_grads = reference_grads(seen, arrays) if np.all(np.isfinite(expected)) else None
        for path, value, grads in evaluate(backend, fn, logits, target, options, arrays):
            assert_matches(value, expected, magnitude, dtype, f"{path} value", allowance=known)
            assert set(grads) == {"logits", *arrays}, path
            if expected_grads is None:  # NaN mean (nothing counted): no gradient to compare
                continue
            for name, g in grads.items():
                ref = np.asarray(expected_grads[name])
                scale = np.max(np.abs(ref), initial=0.0)
                allowance = known_g if name == "logits" else _scalar_allowance(seen, dtype, name)
                # the compute error of a gradient is relative to its largest entry, and
                # central differences of the reference are good to ~1e-8 of that
                assert_matches(g, ref, scale, dtype, f"{path} d/d{name}", floor=(1e-6, 1e-7),
                               allowance=allowance)

    run_given(backend, "reference", fuzz_cases(backend), check)


def _position_weights(case: Case) -> np.ndarray:
    """s per position: the target's class weight (1 without weights, 1 for soft targets,
    0 where ignored)."""
    axis = case.options.get("axis", -1)
    if case.target.dtype.kind == "f":
        return np.ones(np.sum(case.logits, axis=axis).shape)
    y = case.target
    ignore = case.options.get("ignore_index")
    counted = np.ones(y.shape, dtype=bool) if ignore is None else y != ignore
    w = case.options.get("weight")
    s = np.ones(y.shape) if w is None else np.asarray(w)[np.where(counted, y, 0)]
    return np.where(counted, s, 0.0)


def test_loss_is_non_negative_where_the_math_says_so(backend):
    def check(example):
        case, dtype, arrays = example
        fn = getattr(el, case.loss)
        logits, target, options, seen = _on_backend(backend, case, dtype, arrays)
        for path, value, _ in evaluate(backend, fn, logits, target, options, arrays):
            r = reference.resolve_options(seen.loss, **seen.options)
            least = 0.0 if r["regularizer"] is None else r["regularizer"].minimum(r)
            if least == 0.0:  # CE and a regularizer >= 0 (the entropy, ...)
                assert np.all(value[~np.isnan(value)] >= 0), (path, value)
                continue
            # a regularizer >= least (MIX-ENT's R >= -log(1 + eps) since q <= 1) and
            # CE >= 0: a position's loss is >= -s * c with s = w_y (1 for soft targets, 0
            # if ignored) and c = -weight * least / ln b; "sum" adds those, and "mean", a
            # weighted average (over sum s), is >= -c
            c = -r["reg_weight"] * least / math.log(r["reg_base"])
            s = _position_weights(seen)
            bound = {"none": -c * s, "sum": -c * np.sum(s), "mean": -c}[case.options["reduction"]]
            bound = np.broadcast_to(bound, np.shape(value))
            known = known_error(seen.loss, seen.logits, seen.target, seen.options, dtype)
            slack = tolerance(dtype)["atol"] * 1e-3 + np.abs(bound) * tolerance(dtype)["rtol"] + known
            counted = ~np.isnan(value)
            assert np.all(value[counted] >= (bound - slack)[counted]), (path, value, bound)

    run_given(backend, "property",
              fuzz_cases(backend, non_negative=True), check)


def test_entropy_lies_between_zero_and_log_classes(backend):
    def check(example):
        case, dtype, _ = example
        axis = case.options.get("axis", -1)
        base = case.options.get("base", math.e)
        logits = backend.asarray(case.logits, dtype)
        seen = backend.to_numpy(logits)
        h = backend.to_numpy(el.entropy(logits, axis=axis, base=base))
        num = case.logits.shape[axis]
        tol = tolerance(dtype)
        assert h.shape == np.sum(seen, axis=axis).shape
        assert np.all(h >= 0), h
        assert np.all(h <= math.log(num) / math.log(base) * (1 + tol["rtol"]) + tol["atol"]), h
        p = backend.to_numpy(el.softmax(logits, axis=axis))
        all_masked = np.all(np.isneginf(seen), axis=axis)  # no probability anywhere: sums to 0
        np.testing.assert_allclose(np.sum(p, axis=axis), np.where(all_masked, 0.0, 1.0),
                                   rtol=tol["rtol"] * num, atol=tol["atol"])
        assert np.all(p >= 0) and np.all(p[np.isneginf(seen)] == 0)
        assert np.all(backend.to_numpy(el.log_softmax(logits, axis=axis)) <= 0)
        # against the definition, in float64, on what the backend saw
        moved = np.moveaxis(seen, axis, -1)
        m = moved.max(-1, keepdims=True)
        m = np.where(np.isneginf(m), 0.0, m)  # a fully masked position: entropy 0
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.exp(moved - m)
            q = q / np.where(q.sum(-1, keepdims=True) > 0, q.sum(-1, keepdims=True), 1.0)
            expected = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), -1)
        # plus a few ulps of the parts (log C, and p log p's terms)
        known = 8 * compute_ulp(dtype) * (math.log(num) + 2) / math.log(base)
        assert np.all(np.abs(h - expected / math.log(base))
                      <= tol["rtol"] * 10 * np.abs(expected) + tol["atol"] * num + known), (h, expected)

    run_given(backend, "property",
              fuzz_cases(backend, losses=("cross_entropy",)).filter(
                  lambda ex: ex[0].logits.size > 0 and not np.isneginf(ex[0].logits).all()),
              check)


def test_adding_a_constant_to_a_position_changes_nothing(backend):
    def check(example):
        (case, dtype, arrays), seed = example
        fn = getattr(el, case.loss)
        axis = case.options.get("axis", -1)
        logits, target, options, seen = _on_backend(backend, case, dtype, arrays)
        # an integer per position, small enough that z + c is exact in the dtype
        span = {"float64": 1024, "float32": 1024, "float16": 128, "bfloat16": 32}[dtype]
        rng = np.random.default_rng(seed)
        shift = rng.integers(-span, span + 1, size=np.sum(case.logits, axis=axis, keepdims=True).shape)
        shifted = backend.asarray(case.logits + shift, dtype)
        assert np.array_equal(backend.to_numpy(shifted), seen.logits + shift)  # exact
        before = evaluate(backend, fn, logits, target, options, arrays)
        after = evaluate(backend, fn, shifted, target, options, arrays)
        magnitude = _magnitude(seen)
        moved = case.logits + shift
        known = known_error(seen.loss, moved, seen.target, seen.options, dtype)
        known_g = known_error(seen.loss, moved, seen.target, seen.options, dtype, per_class=True)
        for (path, v0, g0), (_, v1, g1) in zip(before, after, strict=True):
            assert_matches(v1, v0, magnitude, dtype, f"{path} value", allowance=known)
            for name in g0:
                scale = np.max(np.abs(g0[name]), initial=0.0)
                allowance = known_g if name == "logits" else _scalar_allowance(
                    Case(seen.loss, moved, seen.target, seen.options), dtype, name)
                assert_matches(g1[name], g0[name], scale, dtype, f"{path} d/d{name}",
                               allowance=allowance)

    run_given(backend, "property",
              st.tuples(fuzz_cases(backend, grid=True), st.integers(0, 2**32 - 1)), check)


def test_gradient_rows_sum_to_zero(backend):
    """Cross entropy's ``S p - w q`` sums to 0 over the classes; so does every other loss's
    gradient, each loss being invariant to a constant added to a position's logits. The
    sum is 0 to within the rounding of the parts (``coefficient_scale``), not merely of the
    result."""

    def check(example):
        case, dtype, arrays = example
        fn = getattr(el, case.loss)
        axis = case.options.get("axis", -1)
        logits, target, options, seen = _on_backend(backend, case, dtype, arrays)
        scale = coefficient_scale(seen.loss, seen.logits, seen.target, seen.options)
        ulp = compute_ulp(dtype)
        for path, value, grads in evaluate(backend, fn, logits, target, options, arrays):
            g = grads["logits"]
            if np.any(np.isnan(value)):
                continue  # a NaN mean (nothing counted): see test_edges
            assert np.all(np.isfinite(g)), (path, g)
            rows = np.sum(g, axis=axis)
            size = np.sum(np.abs(g), axis=axis)
            num = g.shape[axis]
            bound = 2 * tolerance(dtype)["rtol"] * size + 8 * num * ulp * scale
            assert np.all(np.abs(rows) <= bound), (path, rows, bound)

    run_given(backend, "property", st.one_of(
        fuzz_cases(backend, losses=("cross_entropy",)), fuzz_cases(backend)), check)


# --- the linear-head losses ------------------------------------------------------------------


@dataclass
class LinearExample:
    """A linear-head call in float64: the hidden states ``(*positions, H)``, the head, and a
    plain example's target (classes last) and options (no ``axis``)."""

    case: Case  # the plain example, its logits replaced by hidden @ classifier.T + bias
    hidden: np.ndarray
    classifier: np.ndarray
    bias: np.ndarray | None
    arrays: tuple  # the scalars passed as 0-d arrays


@st.composite
def linear_cases(draw, backend):
    """The plain losses' strategy (shapes with N = 0 and C = 1, targets, every option,
    chunk_size), in float64, with the classes moved last and the logits made by a head:
    H in 1..5, a bias or not, logits of a few sizes."""
    plain, _, arrays = draw(fuzz_cases(backend, dtypes=("float64",)))
    options = dict(plain.options)
    axis = options.pop("axis", -1) % plain.logits.ndim
    target = plain.target
    if target.dtype.kind == "f":
        target = np.moveaxis(target, axis, -1)
    positions = np.moveaxis(plain.logits, axis, -1).shape[:-1]
    num_classes = plain.logits.shape[axis]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    features = draw(st.integers(1, 5))
    hidden = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 3.0])), size=positions + (features,))
    classifier = rng.normal(scale=draw(st.sampled_from([0.5, 2.0])), size=(num_classes, features))
    bias = rng.normal(size=num_classes) if draw(st.booleans()) else None
    logits = hidden @ classifier.T + (0.0 if bias is None else bias)
    case = Case(plain.loss, logits, target, options)
    return LinearExample(case, hidden, classifier, bias, arrays)


def _plain_on_the_logits(example: LinearExample) -> tuple:
    """The plain loss's value on the logits (NumPy), and its gradients carried back to the
    head by the chain rule."""
    case = example.case
    options = {**case.options, **{n: np.asarray(case.options[n]) for n in example.arrays}}
    value, grads = el.value_and_grad(getattr(el, case.loss), case.logits, case.target, **options)
    dz = grads.pop("logits").reshape(-1, case.logits.shape[-1])
    features = example.hidden.shape[-1]
    grads["hidden"] = (dz @ example.classifier).reshape(example.hidden.shape)
    grads["classifier"] = dz.T @ example.hidden.reshape(-1, features)
    if example.bias is not None:
        grads["bias"] = dz.sum(axis=0)
    return value, grads


def _linear_paths(backend, example: LinearExample) -> list:
    """``[(path, value, grads)]`` of the linear-head loss on ``backend``: the explicit
    ``linear_value_and_grad`` and, on torch, autograd."""
    case = example.case
    fn = getattr(el, f"linear_{case.loss}")
    soft = case.target.dtype.kind == "f"
    h, w = backend.asarray(example.hidden), backend.asarray(example.classifier)
    target = backend.asarray(case.target, "float64") if soft else backend.asarray(case.target)
    options = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v
               for k, v in case.options.items() if k not in example.arrays}
    learnt = {n: backend.asarray(np.float64(case.options[n])) for n in example.arrays}
    if example.bias is not None:
        learnt["bias"] = backend.asarray(example.bias)
    if backend.library == "jax":
        out = _linear_jitted(fn, h, w, target, options, learnt)
    else:
        value, grads = el.linear_value_and_grad(fn, h, w, target, **options, **learnt)
        out = [("linear_value_and_grad", value, grads)]
    if backend.library == "torch":
        leaves = {n: t.clone().requires_grad_(True) for n, t in
                  {"hidden": h, "classifier": w, **learnt}.items()}
        value = fn(leaves["hidden"], leaves["classifier"], target, **options,
                   **{n: leaves[n] for n in learnt})
        value.sum().backward()
        out.append(("torch.autograd", value.detach(), {n: t.grad for n, t in leaves.items()}))
    return [(path, backend.to_numpy(v), {n: backend.to_numpy(g) for n, g in grads.items()})
            for path, v, grads in out]


def _linear_jitted(fn, hidden, classifier, target, options, learnt) -> list:
    """JAX: ``linear_value_and_grad`` and ``jax.grad``, both under one ``jax.jit``."""
    import jax

    def paths(leaves):
        h, w = leaves.pop("hidden"), leaves.pop("classifier")
        explicit = el.linear_value_and_grad(fn, h, w, target, **options, **leaves)
        total = lambda a: fn(a["hidden"], a["classifier"], target, **options,
                             **{n: a[n] for n in learnt}).sum()
        auto = jax.grad(total)({"hidden": h, "classifier": w, **leaves})
        return explicit, fn(h, w, target, **options, **leaves), auto

    (value, grads), auto_value, auto = jax.jit(paths)(
        {"hidden": hidden, "classifier": classifier, **learnt})
    return [("linear_value_and_grad", value, grads), ("jax.grad", auto_value, auto)]


@pytest.mark.parametrize("backend", backend_params(["numpy", "torch", "jax"]))
def test_linear_head_equals_the_plain_loss_on_its_logits(backend):
    """Value and the gradients of hidden, classifier, bias and the learnt scalars, float64;
    the rounding of the logits' matmuls differs between the two, so within float64's
    tolerance of the largest entry, not bit for bit."""
    def check(example):
        expected, expected_grads = _plain_on_the_logits(example)
        magnitude = _magnitude(example.case)
        for path, value, grads in _linear_paths(backend, example):
            assert_matches(value, expected, magnitude, "float64", f"{path} value")
            assert set(grads) == set(expected_grads), path
            if np.any(np.isnan(expected)):  # a NaN mean (D = 0): as test_matches_reference
                continue
            for name, g in grads.items():
                scale = np.max(np.abs(expected_grads[name]), initial=0.0)
                assert_matches(g, expected_grads[name], scale, "float64", f"{path} d/d{name}")

    run_given(backend, "linear", linear_cases(backend), check)
